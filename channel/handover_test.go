package channel

import (
	"errors"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/skylane/skylane/internal/shm"
	"github.com/skylane/skylane/ring"
)

// handOver exports c and adopts it in a new Channel (as a new nexus
// process would, from duplicated descriptors), then abandons c.
func handOver(t *testing.T, c *Channel) *Channel {
	t.Helper()
	h, fds, err := c.Export()
	if err != nil {
		t.Fatal(err)
	}
	n, err := Adopt(h, fds)
	if err != nil {
		t.Fatal(err)
	}
	c.Abandon()
	return n
}

// TestHandover: packets move both ways across a hand-over of the nexus
// end, the app notices nothing (same rings, buffers, eventfds), a buffer
// the old end held in flight goes back to the pool, and every buffer is
// accounted for afterwards.
func TestHandover(t *testing.T) {
	c, a := newPair(t, Options{Name: "handover"})
	bufs := make([]Buf, 16)
	// Some traffic first: buffers on the alloc ring, some with the app,
	// packets on the RX ring not yet received, one taken from TX and
	// still held by the nexus (in flight).
	if err := c.Sync(); err != nil {
		t.Fatal(err)
	}
	n, _ := a.Alloc(bufs[:4])
	for i := range n {
		bufs[i].Data = fill(bufs[i].Data, uint64(i), 80)
	}
	if k, _ := a.Send(bufs[:n]); k != n {
		t.Fatal("send")
	}
	held := make([]Buf, 1)
	if k, err := c.TakeTX(held); k != 1 || err != nil {
		t.Fatalf("take: %d %v", k, err)
	}
	d := c.Alloc(bufs[:3])
	for i := range d {
		bufs[i].Data = fill(bufs[i].Data, 100+uint64(i), 90)
	}
	if c.Deliver(bufs[:d]) != d {
		t.Fatal("deliver")
	}
	before := c.Counters()

	n2 := handOver(t, c)
	t.Cleanup(func() { n2.Close() })
	if a.Err() != nil {
		t.Fatalf("the app saw the hand-over: %v", a.Err())
	}
	if got := n2.Pool().Reclaimed; got != 1+0 {
		t.Errorf("%d buffers held in flight by the old end were reclaimed, want 1", got)
	}
	if n2.Counters().TxPackets != before.TxPackets {
		t.Errorf("counters not carried: %+v, was %+v", n2.Counters(), before)
	}
	// The rest of the TX ring, then the RX ring, as if nothing happened.
	k, err := n2.TakeTX(bufs)
	if err != nil || k != n-1 {
		t.Fatalf("take after hand-over: %d of %d: %v", k, n-1, err)
	}
	for i := range k {
		check(t, bufs[i].Data, uint64(i+1), 80)
	}
	n2.Release(bufs[:k])
	r, err := a.Receive(bufs)
	if err != nil || r != d {
		t.Fatalf("receive after hand-over: %d of %d: %v", r, d, err)
	}
	for i := range r {
		check(t, bufs[i].Data, 100+uint64(i), 90)
	}
	a.Free(bufs[:r])
	if err := n2.Sync(); err != nil {
		t.Fatal(err)
	}
	// New traffic both ways.
	for round := range 50 {
		m, err := a.Alloc(bufs[:8])
		if err != nil {
			t.Fatal(err)
		}
		for i := range m {
			bufs[i].Data = fill(bufs[i].Data, uint64(round), 70)
		}
		a.Send(bufs[:m])
		k, err := n2.TakeTX(bufs)
		if err != nil || k != m {
			t.Fatalf("round %d: took %d of %d: %v", round, k, m, err)
		}
		n2.Release(bufs[:k])
		if err := n2.Sync(); err != nil {
			t.Fatal(err)
		}
	}
	st := n2.Pool().Stats()
	if out := st.BuffersTotal - st.FreeBuffers; out != n2.alloc.Pending() {
		t.Errorf("%d buffers out, %d on the alloc ring", out, n2.alloc.Pending())
	}
}

// TestHandoverTrustsNoApp: what the app wrote into the ring headers
// before the hand-over (the nexus's own consumer index) is not what the
// new end goes by: it republishes the index it was handed, and an app
// that then claims a buffer it does not hold is caught as before.
func TestHandoverTrustsNoApp(t *testing.T) {
	c, a := newPair(t, Options{Name: "trust"})
	if err := c.Sync(); err != nil {
		t.Fatal(err)
	}
	cons := *a.ringWord(RingTX, 0x40)
	*a.ringWord(RingTX, 0x40) = cons + 100 // the nexus's index, scribbled
	n2 := handOver(t, c)
	t.Cleanup(func() { n2.Close() })
	if got := *a.ringWord(RingTX, 0x40); got != cons {
		t.Errorf("the new end's TX consumer index reads %d, want its own %d", got, cons)
	}
	// A slot naming a buffer the app never got (outside the pool).
	size := uint32(a.desc.Rings[RingTX].Size)
	slot := (*uint64)(unsafe.Pointer(&a.maps[0].Bytes()[a.desc.Rings[RingTX].Offset+ring.HeaderLen+int(cons&(size-1))*ring.SlotLen]))
	*slot = 1 << 30                   // Index 2^30, length 0
	*a.ringWord(RingTX, 0) = cons + 1 // prod
	buf := make([]Buf, 4)
	if _, err := n2.TakeTX(buf); !errors.As(err, new(*DefunctError)) {
		t.Fatalf("a stolen buffer after the hand-over: %v, want defunct", err)
	}
}

// TestReadOnlyTables: the app's descriptors of the tables the nexus
// writes (advisories, stats) are read-only: no writable mapping of them,
// and no writable reopen. (A nexus that takes over maps them writable
// again, so they are not sealed against future writes.)
func TestReadOnlyTables(t *testing.T) {
	c, _ := newPair(t, Options{Name: "ro"})
	d, fds, err := c.Share()
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, fd := range fds {
			shm.CloseFD(fd)
		}
	}()
	for _, i := range []int{fdAdvisory, fdStats} {
		size := d.AdvisorySize
		if i == fdStats {
			size = d.StatsSize
		}
		if _, err := shm.Map(fds[i], 0, size, true); err == nil {
			t.Errorf("descriptor %d: writable mapping allowed", i)
		}
		fl, err := unix.FcntlInt(uintptr(fds[i]), unix.F_GETFL, 0)
		if err != nil || fl&unix.O_ACCMODE != unix.O_RDONLY {
			t.Errorf("descriptor %d: flags %#x, %v: want read-only", i, fl, err)
		}
		if m, err := shm.Map(fds[i], 0, size, false); err != nil {
			t.Errorf("descriptor %d: read-only mapping: %v", i, err)
		} else {
			m.Unmap()
		}
	}
}
