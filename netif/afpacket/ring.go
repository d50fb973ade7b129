package afpacket

import (
	"encoding/binary"
	"errors"
)

// Layout of the TPACKET_V3 structures in the mmapped ring (linux/if_packet.h),
// host byte order. Offsets are from the start of each structure.
const (
	// struct tpacket_block_desc: version, offset_to_priv, then struct
	// tpacket_hdr_v1.
	blkStatusOff   = 8  // block_status: TP_STATUS_KERNEL or TP_STATUS_USER
	blkNumPktsOff  = 12 // num_pkts
	blkFirstOff    = 16 // offset_to_first_pkt, from the block's start
	blkLenOff      = 20 // blk_len: bytes of the block in use, header included
	blockHdrLen    = 48 // sizeof(struct tpacket_block_desc), 8-byte aligned
	statusKernel   = 0  // TP_STATUS_KERNEL: the kernel owns the block/frame
	statusUser     = 1  // TP_STATUS_USER: the block is ours to read
	statusVLAN     = 0x10
	statusVLANTPID = 0x40

	// struct tpacket3_hdr.
	frNextOff   = 0  // tp_next_offset: to the next frame, from this one
	frSnapOff   = 12 // tp_snaplen: bytes captured
	frLenOff    = 16 // tp_len: bytes on the wire
	frStatusOff = 20 // tp_status
	frMacOff    = 24 // tp_mac: link header, from the frame header's start
	frVLANOff   = 32 // hv1.tp_vlan_tci (u32)
	frTPIDOff   = 36 // hv1.tp_vlan_tpid (u16)
	frameHdrLen = 48 // sizeof(struct tpacket3_hdr)
)

// errBadBlock says a block's header or one of its frame headers points
// outside the block. The kernel never writes one; if it ever did, the rest
// of the block is dropped (counted), never read out of bounds.
var errBadBlock = errors.New("afpacket: malformed ring block")

// frameDesc is one received frame, located and checked against its block.
type frameDesc struct {
	data   int    // offset of the link header in the block
	snap   int    // bytes captured at data
	wire   int    // bytes the frame had (tp_len); > snap when truncated
	status uint32 // tp_status
	vlan   uint16 // TCI of a VLAN tag the kernel took off (status has statusVLAN)
	tpid   uint16 // its TPID: 0x8100 unless statusVLANTPID says otherwise
}

// blockIter walks the frames of one block that the kernel handed over. It
// reads only the block it was given and checks every offset before use, so
// any byte pattern yields frames inside the block or an error, never a
// panic.
type blockIter struct {
	b      []byte // the block, cut to its blk_len
	left   int    // frames not yet returned
	off    int    // offset of the next frame header
	minMac int    // smallest valid tp_mac: the frame header, plus the virtio header
}

// reset starts walking block b. minMac is the least tp_mac a frame may
// have: frameHdrLen, plus room for the virtio header when it is on.
func (it *blockIter) reset(b []byte, minMac int) error {
	*it = blockIter{minMac: minMac}
	if len(b) < blockHdrLen {
		return errBadBlock
	}
	num := binary.NativeEndian.Uint32(b[blkNumPktsOff:])
	first := binary.NativeEndian.Uint32(b[blkFirstOff:])
	used := binary.NativeEndian.Uint32(b[blkLenOff:])
	if num == 0 {
		return nil // retired by the timer with nothing in it
	}
	if used < blockHdrLen || uint64(used) > uint64(len(b)) {
		return errBadBlock
	}
	b = b[:used]
	if first < blockHdrLen || uint64(first)+frameHdrLen > uint64(len(b)) {
		return errBadBlock
	}
	// Every frame takes at least its header: more frames than that cannot
	// fit, and bounding num bounds the walk.
	if uint64(num) > uint64((len(b)-blockHdrLen)/frameHdrLen) {
		return errBadBlock
	}
	it.b, it.left, it.off = b, int(num), int(first)
	return nil
}

// remaining is how many frames the walk has not returned yet.
func (it *blockIter) remaining() int { return it.left }

// next fills f with the next frame. It returns false at the end of the
// block, or with an error when a frame header is out of bounds (the walk
// then ends: the frames after it cannot be located).
func (it *blockIter) next(f *frameDesc) (bool, error) {
	if it.left == 0 {
		return false, nil
	}
	b, off := it.b, it.off
	if off < 0 || off+frameHdrLen > len(b) {
		it.left = 0
		return false, errBadBlock
	}
	h := b[off : off+frameHdrLen]
	mac := int(binary.NativeEndian.Uint16(h[frMacOff:]))
	snap := binary.NativeEndian.Uint32(h[frSnapOff:])
	if mac < it.minMac || uint64(off)+uint64(mac)+uint64(snap) > uint64(len(b)) {
		it.left = 0
		return false, errBadBlock
	}
	*f = frameDesc{
		data:   off + mac,
		snap:   int(snap),
		wire:   int(binary.NativeEndian.Uint32(h[frLenOff:])),
		status: binary.NativeEndian.Uint32(h[frStatusOff:]),
	}
	if f.status&statusVLAN != 0 {
		f.vlan = uint16(binary.NativeEndian.Uint32(h[frVLANOff:]))
		f.tpid = 0x8100
		if f.status&statusVLANTPID != 0 {
			f.tpid = binary.NativeEndian.Uint16(h[frTPIDOff:])
		}
	}
	it.left--
	if it.left > 0 {
		next := binary.NativeEndian.Uint32(h[frNextOff:])
		// Frames only move forward and never overlap a header: this also
		// guarantees the walk ends.
		if next < frameHdrLen || uint64(off)+uint64(next) > uint64(len(b)) {
			it.left = 0
			return true, errBadBlock // f itself is fine
		}
		it.off = off + int(next)
	}
	return true, nil
}
