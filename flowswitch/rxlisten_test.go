package flowswitch_test

import (
	"bytes"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/skylane/skylane/capture"
	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/flowswitch"
	"github.com/skylane/skylane/packet"
	"github.com/skylane/skylane/packet/packettest"
	"github.com/skylane/skylane/pool"
)

// Addresses of the listener tests: a flooder and two clients (documentation
// range, each its own source bucket with a random seed but for a 1/1024
// chance, which the assertions allow for by naming the one they need).
var (
	flooder = netip.MustParseAddr("198.19.7.7")
	client1 = netip.MustParseAddr("198.19.0.20")
	client2 = netip.MustParseAddr("198.19.0.21")
)

// synFrame is a SYN from src:sport to the listener's port 80, with
// sequence number seq and the tag as payload (SYNs may carry data; the tag
// names the packet in drain's output).
func synFrame(src netip.Addr, sport uint16, seq uint32, tag string) []byte {
	f := packettest.Frame{Src: netip.AddrPortFrom(src, sport), Dst: netip.AddrPortFrom(localIP, 80),
		Proto: packet.ProtoTCP, Flags: packet.TCPSyn, Seq: seq, Payload: []byte(tag)}
	return f.Bytes()
}

// listenRig is a switch with one port whose RX ring has 64 slots, a TCP
// listener on port 80 and a UDP flow, input batches of 64, and a clock the
// test moves.
func listenRig(t testing.TB) (*rig, *int64) {
	t.Helper()
	clock := new(int64)
	r := newRig(t, flowswitch.Options{Batch: 64, Now: func() int64 { return *clock }},
		channel.Options{RxSize: 64})
	k := packet.MakeKey(packet.ProtoTCP, netip.AddrPortFrom(localIP, 80), netip.AddrPort{}).Listener3()
	if _, err := r.sw.Register(r.ports[0], k, flow.Listener3); err != nil {
		t.Fatal(err)
	}
	return r, clock
}

// countPrefix returns how many of tags start with prefix.
func countPrefix(tags []string, prefix string) int {
	n := 0
	for _, s := range tags {
		if strings.HasPrefix(s, prefix) {
			n++
		}
	}
	return n
}

// A flood of SYNs from one source takes the listener's ring to its lines,
// and no further; a client's SYN in the same batch is admitted first; the
// flooder's packets keep their order; the refused ones are counted and
// captured as listen_share; and once the flooder is heavy, it gets only the ring above
// half, while a new client still gets in.
func TestListenShare(t *testing.T) {
	r, _ := listenRig(t)
	capt := newCapture(t, r.sw, capture.Options{})
	flood := func(prefix string, n int) [][]byte {
		var fs [][]byte
		for i := range n {
			fs = append(fs, synFrame(flooder, uint16(1000+i), uint32(i), fmt.Sprintf("%s%02d", prefix, i)))
		}
		return fs
	}
	// 64 flood SYNs into an empty ring of 64: the listener stops at the
	// quarter kept for connected flows.
	r.write(t, flood("fa", 64)...)
	r.rxOnce(t, 64)
	got := r.drain(t, 0)
	if len(got) != 48 {
		t.Fatalf("first batch: %d admitted, want 48 (the ring but its last quarter)", len(got))
	}
	for i, s := range got {
		if want := fmt.Sprintf("fa%02d", i); s != want {
			t.Fatalf("flood packet %d is %s, want %s: one source's order changed", i, s, want)
		}
	}
	if d := dropsOf(t, r.sw, "listen_share"); d != 16 {
		t.Errorf("listen_share drops %d, want 16", d)
	}
	if n := count(readCapture(capt), capture.DropRx, "port0", "listen_share"); n != 16 {
		t.Errorf("%d listen_share drops captured, want 16", n)
	}

	// The client's SYN comes last in a full batch: it goes first.
	fs := append(flood("fb", 63), synFrame(client1, 5555, 1, "client1"))
	r.write(t, fs...)
	r.rxOnce(t, 64)
	got = r.drain(t, 0)
	if countPrefix(got, "client1") != 1 || len(got) != 48 {
		t.Fatalf("second batch: got %v, want the client and 47 flood SYNs", got)
	}
	// The flooder (95 admitted) is heavy now: at most the ring above half.
	fs = append(flood("fc", 63), synFrame(client2, 6666, 1, "client2"))
	r.write(t, fs...)
	r.rxOnce(t, 64)
	got = r.drain(t, 0)
	if countPrefix(got, "client2") != 1 || countPrefix(got, "fc") > 31 {
		t.Fatalf("third batch: got %d packets, client2 %d times, %d flood SYNs; want client2 and at most 31",
			len(got), countPrefix(got, "client2"), countPrefix(got, "fc"))
	}
	if st := r.sw.Stats(); st.ListenDrops != 16+16+uint64(64-len(got)) || st.RxRingDrops != 0 {
		t.Errorf("listen drops %d, ring drops %d", st.ListenDrops, st.RxRingDrops)
	}
}

// A SYN refused for the listener's line is admitted when the client sends
// it again (same ports and sequence number), down to an eighth of the
// ring; another SYN of the same client is not.
func TestListenRetransmission(t *testing.T) {
	r, _ := listenRig(t)
	var fs [][]byte
	for i := range 48 { // the ring to its light line, from many sources
		src := netip.AddrFrom4([4]byte{198, 19, 1, byte(i)})
		fs = append(fs, synFrame(src, 1000, 1, fmt.Sprintf("fill%02d", i)))
	}
	r.write(t, fs...)
	r.rxOnce(t, len(fs))
	r.write(t, synFrame(client1, 5555, 77, "first"))
	r.rxOnce(t, 1)
	if d := dropsOf(t, r.sw, "listen_share"); d != 1 {
		t.Fatalf("listen_share drops %d, want the client's SYN", d)
	}
	// Nothing drained: the ring is at its light line. The client's
	// retransmission gets in; a new SYN from it does not.
	r.write(t, synFrame(client1, 5555, 77, "again"), synFrame(client1, 5556, 99, "other"))
	r.rxOnce(t, 2)
	got := r.drain(t, 0)
	if countPrefix(got, "again") != 1 || countPrefix(got, "other") != 0 || countPrefix(got, "first") != 0 {
		t.Errorf("got %v: want the retransmission, not the new SYN", got)
	}
}

// A port takes at most listenUnanswered (256) SYNs the app has not answered
// yet; the count halves every 100 ms, so SYNs the app never answers do not
// close the gate for good.
func TestListenUnanswered(t *testing.T) {
	r, clock := listenRig(t)
	admitted := 0
	for b := range 8 { // 8 batches of 40 SYNs from 40 sources each, drained
		var fs [][]byte
		for i := range 40 {
			src := netip.AddrFrom4([4]byte{198, 19, byte(b), byte(i)})
			fs = append(fs, synFrame(src, 1000, 1, "s"))
		}
		r.write(t, fs...)
		r.rxOnce(t, len(fs))
		admitted += len(r.drain(t, 0))
	}
	if admitted != 256 {
		t.Errorf("%d SYNs admitted without an answer, want 256", admitted)
	}
	*clock += int64(100 * time.Millisecond)
	r.write(t, synFrame(client1, 5555, 1, "later"))
	r.rxOnce(t, 1)
	if got := r.drain(t, 0); countPrefix(got, "later") != 1 {
		t.Errorf("100 ms later: got %v, want the SYN", got)
	}
}

// Listener packets leave half of the port's pool to the connected flows
// and the app's transmit path: with a pool of 64 buffers and a ring of
// 256 slots, a flood from many sources takes at most 32.
func TestListenPoolLine(t *testing.T) {
	r := newRig(t, flowswitch.Options{Batch: 64},
		channel.Options{RxSize: 256, Pool: pool.Options{MaxSegments: 4}}) // 4 segments of 16 buffers
	k := packet.MakeKey(packet.ProtoTCP, netip.AddrPortFrom(localIP, 80), netip.AddrPort{}).Listener3()
	if _, err := r.sw.Register(r.ports[0], k, flow.Listener3); err != nil {
		t.Fatal(err)
	}
	var fs [][]byte
	for i := range 64 {
		fs = append(fs, synFrame(netip.AddrFrom4([4]byte{198, 19, 2, byte(i)}), 1000, 1, "s"))
	}
	r.write(t, fs...)
	r.rxOnce(t, len(fs))
	got := r.drain(t, 0)
	if len(got) == 0 || len(got) > 32 {
		t.Errorf("%d SYNs admitted with a pool of 64 buffers, want 1 to 32", len(got))
	}
	if st := r.sw.Stats(); st.AllocFails != 0 || st.ListenDrops != uint64(64-len(got)) {
		t.Errorf("alloc fails %d, listen drops %d", st.AllocFails, st.ListenDrops)
	}
}

// FuzzListenAdmit feeds a listener flow batches of TCP packets from a few
// sources (each byte triple: source, flags, what follows), draining the
// app or moving the clock now and then, and checks what must hold
// whatever arrives: every packet is delivered (maybe merged with the
// previous one of its source) or counted as listen_share,
// none is dropped for a full ring, and each source's packets arrive in
// the order they were sent.
func FuzzListenAdmit(f *testing.F) {
	f.Add([]byte{0, 2, 0, 1, 2, 0, 0, 2, 0x80, 3, 16, 0xc0})
	f.Add(bytes.Repeat([]byte{7, 2, 0}, 200))
	f.Add(bytes.Repeat([]byte{1, 2, 0, 2, 16, 0, 3, 4, 0x40}, 40))
	r, clock := listenRig(f) // one rig for all inputs: only deltas are checked
	f.Fuzz(func(t *testing.T, data []byte) {
		st0 := r.sw.Stats()
		next := map[byte]int{}     // per source, the next tag to send
		lastSeen := map[byte]int{} // per source, the last tag the app got
		var batch [][]byte
		sent := 0
		drain := func() {
			for _, payload := range r.drain(t, 0) {
				// In-order segments of one source may be merged: a
				// payload holds one tag or more, each ending in ";".
				for _, tag := range strings.SplitAfter(payload, ";") {
					if tag == "" {
						continue
					}
					var src byte
					var n int
					if _, err := fmt.Sscanf(tag, "%d,%d;", &src, &n); err != nil {
						t.Fatalf("tag %q: %v", tag, err)
					}
					if last, ok := lastSeen[src]; ok && n <= last {
						t.Fatalf("source %d: packet %d after %d", src, n, last)
					}
					lastSeen[src] = n
				}
			}
		}
		flush := func() {
			if len(batch) == 0 {
				return
			}
			r.write(t, batch...)
			r.rxOnce(t, len(batch))
			sent += len(batch)
			batch = batch[:0]
		}
		for i := 0; i+2 < len(data); i += 3 {
			src, flags, op := data[i]%8, packet.TCPFlags(data[i+1]&0x1f), data[i+2]
			tag := fmt.Sprintf("%d,%d;", src, next[src])
			next[src]++
			fr := packettest.Frame{Src: netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 19, 4, src}), 1000),
				Dst: netip.AddrPortFrom(localIP, 80), Proto: packet.ProtoTCP, Flags: flags, Seq: uint32(op), Payload: []byte(tag)}
			batch = append(batch, fr.Bytes())
			if op&0x80 != 0 || len(batch) == 64 {
				flush()
			}
			if op&0x40 != 0 {
				drain()
			}
			if op&0x20 != 0 {
				*clock += int64(op&0x1f) * int64(10*time.Millisecond)
			}
		}
		flush()
		drain()
		st := r.sw.Stats()
		// Delivered counts ring slots: a merged super packet is one.
		delivered := st.Delivered - st0.Delivered + st.Merged - st0.Merged
		shared := st.ListenDrops - st0.ListenDrops
		if delivered+shared != uint64(sent) || st.RxRingDrops != 0 || st.AllocFails != 0 {
			t.Fatalf("sent %d: delivered %d, listen drops %d, ring drops %d, alloc fails %d",
				sent, delivered, shared, st.RxRingDrops, st.AllocFails)
		}
	})
}

// A source that completed a handshake lately (a connected TCP flow
// registered with it) goes first, down to an eighth of the ring: its new
// SYN gets in where a new client's does not.
func TestListenKnownSource(t *testing.T) {
	r, _ := listenRig(t)
	r.registerTCPFrom(t, 0, netip.AddrPortFrom(client2, 4444), netip.AddrPortFrom(localIP, 80))
	var fs [][]byte
	for i := range 48 { // the ring to its light line, from many sources
		fs = append(fs, synFrame(netip.AddrFrom4([4]byte{198, 19, 1, byte(i)}), 1000, 1, fmt.Sprintf("fill%02d", i)))
	}
	r.write(t, fs...)
	r.rxOnce(t, len(fs))
	r.write(t, synFrame(client1, 5555, 1, "new"), synFrame(client2, 5556, 1, "known"))
	r.rxOnce(t, 2)
	got := r.drain(t, 0)
	if countPrefix(got, "known") != 1 || countPrefix(got, "new") != 0 {
		t.Errorf("got %d packets, the known source's SYN %d times, the new one's %d: want only the known one's",
			len(got), countPrefix(got, "known"), countPrefix(got, "new"))
	}
}
