package regulate

import (
	"testing"

	"github.com/skylane/skylane/internal/fuzzbytes"
	"github.com/skylane/skylane/packet"
)

// FuzzQueue replays random Enqueue / Dequeue / Transitions / Forget / clock
// sequences on a small queue (so overflow, slot reuse and the shared flow
// are reached) and checks after every operation: no panic, never more than
// Limit packets, every packet accounted for (checkInvariants and
// conserved), and each stream's packets leave in the order they arrived.
//
// A stream is what the queue files as one flow: a token, or a 5-tuple with
// no token, or a frame with no IP header (the shared flow). Frames carry
// their stream and sequence number in a trailer the queue never touches
// (ECN marking writes only inside the IP header).
func FuzzQueue(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15})
	f.Add([]byte("\x00\x01\x40\x00\x00\x10\x00\x01\x41\x00\x00\x10\x05\x20\x01\x00\x00\x00\x00\x02\x08"))
	f.Add(bytesRepeat([]byte{0, 1, 0xff, 0, 0, 0, 0x80, 0x05, 0x30}, 40))
	f.Add(bytesRepeat([]byte{0x10, 3, 7, 0, 0x02, 0x00, 0x00, 0x00, 0x40, 0x01, 0x07}, 60))
	f.Fuzz(func(t *testing.T, data []byte) {
		r := fuzzbytes.New(data)
		cfg := r.Byte()
		q, err := New(Options{
			Limit:     1 + int(cfg&0x1f),     // 1..32
			Flows:     1 + int(cfg>>5),       // 1..8
			Batch:     1 + int(r.Byte()&0x7), // 1..8
			ECN:       cfg&0x10 != 0,
			DropBatch: 1 + int(r.Byte()&0x3),
			LinkType:  packet.Ethernet,
		})
		if err != nil {
			t.Fatal(err)
		}
		var (
			now    int64
			next   = map[uint32]uint64{} // stream -> next sequence number to send
			last   = map[uint32]uint64{} // stream -> last sequence number dequeued + 1
			frames = make([][]byte, 8)
			tr     = make([]Transition, 4)
			buf    = make([]byte, q.MaxFrame()+1)
			taken  uint64
		)
		for !r.Done() {
			switch op := r.Byte(); op % 6 {
			case 0, 1: // enqueue
				sel, size, tos := r.Byte(), r.Byte(), r.Byte()
				tok := uint32(sel & 0x7) // 0: none, hash the tuple
				stream := tok
				spec := frameSpec{size: minFrame + int(size)*6, tos: tos, v6: sel&0x08 != 0}
				if tok == 0 {
					spec.sport = uint16(sel >> 4 & 0x3)
					stream = 100 + uint32(spec.sport)*2 + uint32(sel>>3&1)
				}
				if sel&0x40 != 0 && sel&0x80 != 0 { // no IP header: shared flow
					spec.badVersion, tok, stream = true, 0, 200
				}
				spec.stream, spec.seq = stream, next[stream]
				fr := build(spec)
				if op&0x80 != 0 { // an oversize frame: refused
					fr = buf
				}
				tag := Tag{Token: tok, HasAdvisory: sel&0x40 != 0 && tok != 0, Advisory: AdvisoryRef{Port: 1, Index: uint32(tok)}}
				if q.Enqueue(fr, tag, now) {
					next[stream]++
				}
			case 2: // dequeue a batch
				n := q.Dequeue(frames[:1+int(r.Byte()&0x7)], now)
				taken += uint64(n)
				for _, fr := range frames[:n] {
					s, seq := trailer(fr)
					if seq < last[s] {
						t.Fatalf("stream %d: seq %d after %d", s, seq, last[s]-1)
					}
					last[s] = seq + 1
				}
			case 3: // the clock moves, by up to ~65 ms, rarely back
				d := int64(r.Byte()) << (r.Byte() & 0x7) * 2000
				if op&0x80 != 0 {
					d = -d / 16
				}
				now += d
			case 4:
				q.Transitions(tr[:1+int(r.Byte()&0x3)])
			case 5:
				tok := uint32(r.Byte() & 0x7)
				if q.Forget(tok) > 0 {
					// The token may come back as a new flow: its order
					// starts afresh after the packets it had queued. (A
					// flow with packets in its slot has none in the shared
					// flow, which Forget leaves alone.)
					last[tok] = next[tok]
				}
			}
			checkInvariants(t, q)
			conserved(t, q)
			if q.Stats().Dequeued != taken {
				t.Fatalf("Dequeued %d, frames returned %d", q.Stats().Dequeued, taken)
			}
		}
	})
}

func bytesRepeat(b []byte, n int) []byte {
	var out []byte
	for range n {
		out = append(out, b...)
	}
	return out
}
