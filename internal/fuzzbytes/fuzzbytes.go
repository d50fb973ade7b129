// Package fuzzbytes turns a fuzzer's input into a stream of operands for
// fuzz targets that replay operation sequences. Past the end of the input it
// yields zeros, so a target never has to check lengths.
package fuzzbytes

import "encoding/binary"

// Reader hands out the fuzz bytes in order.
type Reader struct{ b []byte }

// New returns a Reader over b.
func New(b []byte) *Reader { return &Reader{b: b} }

// Done reports whether the input is used up.
func (r *Reader) Done() bool { return len(r.b) == 0 }

// Byte returns the next byte, or 0 past the end.
func (r *Reader) Byte() byte {
	if len(r.b) == 0 {
		return 0
	}
	v := r.b[0]
	r.b = r.b[1:]
	return v
}

// U32 returns the next four bytes, little-endian.
func (r *Reader) U32() uint32 {
	var w [4]byte
	for i := range w {
		w[i] = r.Byte()
	}
	return binary.LittleEndian.Uint32(w[:])
}

// U64 returns the next eight bytes, little-endian.
func (r *Reader) U64() uint64 { return uint64(r.U32()) | uint64(r.U32())<<32 }
