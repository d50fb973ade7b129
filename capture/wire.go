package capture

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/skylane/skylane/packet"
)

// A batch is one message on the control socket, nexus → capture client,
// little-endian:
//
//	0  magic "SKC1"
//	4  uint64 matched: Ring.Matched so far
//	12 uint64 drops: Ring.Drops so far
//	20 uint32 records
//	24 records, each:
//	   0  int64 time (unix ns)
//	   8  uint8 point, uint8 link type (packet.LinkType), uint8 len(app), uint8 len(reason)
//	   12 uint32 the frame's length
//	   16 uint32 bytes captured (n)
//	   20 app, reason, then n bytes of frame
//
// An empty batch is a heartbeat: it carries the counters, and tells the
// nexus the client still reads (a write to a closed client fails).
const (
	batchHeaderLen  = 24
	recordHeaderLen = 20
	maxNames        = 2 * 255
)

// MaxRecordLen is the most bytes a record of a capture of snaplen bytes
// takes in a batch.
func MaxRecordLen(snaplen int) int { return recordHeaderLen + maxNames + snaplen }

var batchMagic = [4]byte{'S', 'K', 'C', '1'}

// ErrBadBatch: a batch message that does not decode.
var ErrBadBatch = errors.New("capture: bad batch")

// BatchHeader is a batch's counters.
type BatchHeader struct {
	Matched, Drops uint64
	Records        int
}

// StartBatch returns buf[:0] with a batch header for counters matched and
// drops and no records.
func StartBatch(buf []byte, matched, drops uint64) []byte {
	buf = append(buf[:0], batchMagic[:]...)
	buf = binary.LittleEndian.AppendUint64(buf, matched)
	buf = binary.LittleEndian.AppendUint64(buf, drops)
	return binary.LittleEndian.AppendUint32(buf, 0)
}

// RecordLen returns the bytes rec takes in a batch.
func RecordLen(rec *Record) int {
	return recordHeaderLen + min(len(rec.App), 255) + min(len(rec.Reason), 255) + len(rec.Data)
}

// AppendRecord appends rec to the batch buf (from StartBatch) and counts
// it. Names longer than 255 bytes are cut.
func AppendRecord(buf []byte, rec *Record) []byte {
	app, reason := rec.App[:min(len(rec.App), 255)], rec.Reason[:min(len(rec.Reason), 255)]
	le := binary.LittleEndian
	buf = le.AppendUint64(buf, uint64(rec.Time))
	buf = append(buf, byte(rec.Point), byte(rec.Link), byte(len(app)), byte(len(reason)))
	buf = le.AppendUint32(buf, uint32(rec.Len))
	buf = le.AppendUint32(buf, uint32(len(rec.Data)))
	buf = append(buf, app...)
	buf = append(buf, reason...)
	buf = append(buf, rec.Data...)
	le.PutUint32(buf[20:], le.Uint32(buf[20:])+1)
	return buf
}

// DecodeBatch checks batch b and calls fn on each record (Data aliases b).
// It never panics; a batch that does not decode is ErrBadBatch, after fn
// saw the records before the fault.
func DecodeBatch(b []byte, fn func(*Record)) (BatchHeader, error) {
	var h BatchHeader
	if len(b) < batchHeaderLen || [4]byte(b[:4]) != batchMagic {
		return h, fmt.Errorf("%w: no header (%d bytes)", ErrBadBatch, len(b))
	}
	le := binary.LittleEndian
	h.Matched, h.Drops = le.Uint64(b[4:]), le.Uint64(b[12:])
	n := le.Uint32(b[20:])
	b = b[batchHeaderLen:]
	var rec Record
	for k := uint32(0); k < n; k++ {
		if len(b) < recordHeaderLen {
			return h, fmt.Errorf("%w: record %d truncated", ErrBadBatch, k)
		}
		rec = Record{Time: int64(le.Uint64(b)), Point: Point(b[8]), Link: packet.LinkType(b[9]),
			Len: int(le.Uint32(b[12:]))}
		la, lr, nd := int(b[10]), int(b[11]), le.Uint32(b[16:])
		b = b[recordHeaderLen:]
		if rec.Point >= NumPoints || uint64(nd) > uint64(len(b)) || la+lr+int(nd) > len(b) || int(nd) > rec.Len {
			return h, fmt.Errorf("%w: record %d: point %d, %d of %d bytes, %d left", ErrBadBatch, k, rec.Point, nd, rec.Len, len(b))
		}
		rec.App, rec.Reason = string(b[:la]), string(b[la:la+lr])
		rec.Data = b[la+lr : la+lr+int(nd)]
		b = b[la+lr+int(nd):]
		fn(&rec)
		h.Records++
	}
	if len(b) != 0 {
		return h, fmt.Errorf("%w: %d bytes after %d records", ErrBadBatch, len(b), n)
	}
	return h, nil
}
