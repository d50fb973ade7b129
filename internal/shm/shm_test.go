package shm

import (
	"errors"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestSeals: a peer holding the fd can neither resize the region (which
// would make the nexus fault) nor, once sealed, map it writable.
func TestSeals(t *testing.T) {
	r, err := NewRegion(RegionOptions{Name: "seal", Size: 4 * PageSize})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := unix.Ftruncate(r.FD(), int64(PageSize)); err == nil {
		t.Fatal("shrinking a sealed region worked")
	}
	if err := unix.Ftruncate(r.FD(), int64(8*PageSize)); err == nil {
		t.Fatal("growing a sealed region worked")
	}
	mine, err := Map(r.FD(), 0, r.Size(), true)
	if err != nil {
		t.Fatal(err)
	}
	defer mine.Unmap()
	if err := r.SealFutureWrite(); err != nil {
		t.Fatal(err)
	}
	if m, err := Map(r.FD(), 0, r.Size(), true); err == nil {
		m.Unmap()
		t.Fatal("writable mapping after F_SEAL_FUTURE_WRITE")
	}
	ro, err := Map(r.FD(), 0, r.Size(), false)
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Unmap()
	mine.Bytes()[5] = 42 // the creator's mapping still writes
	if ro.Bytes()[5] != 42 {
		t.Fatal("read-only peer does not see the creator's write")
	}
}

// TestPunchReturnsMemory: punched pages go back to the OS and read as zero.
func TestPunchReturnsMemory(t *testing.T) {
	r, err := NewRegion(RegionOptions{Name: "punch", Size: 64 * PageSize})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	m, err := Map(r.FD(), 0, r.Size(), true)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Unmap()
	for i := range m.Bytes() {
		m.Bytes()[i] = 1
	}
	before, _ := r.AllocatedBytes()
	if err := r.Punch(0, 32*PageSize); err != nil {
		t.Fatal(err)
	}
	after, _ := r.AllocatedBytes()
	if before-after < int64(32*PageSize) {
		t.Fatalf("allocated %d -> %d after punching %d bytes", before, after, 32*PageSize)
	}
	if m.Bytes()[0] != 0 || m.Bytes()[32*PageSize] != 1 {
		t.Fatal("punch hit the wrong pages")
	}
	if err := r.Punch(60*PageSize, 8*PageSize); err == nil {
		t.Fatal("punch past the end accepted")
	}
	if _, err := NewRegion(RegionOptions{Name: "odd", Size: PageSize + 1}); err == nil {
		t.Fatal("size not a page multiple accepted")
	}
}

// TestReservation: segments mapped into a reservation share memory with the
// file, and unmapping makes them inaccessible again without moving others.
func TestReservation(t *testing.T) {
	r, err := NewRegion(RegionOptions{Name: "res", Size: 4 * PageSize})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	whole, err := Map(r.FD(), 0, r.Size(), true)
	if err != nil {
		t.Fatal(err)
	}
	defer whole.Unmap()
	res, err := Reserve(r.Size())
	if err != nil {
		t.Fatal(err)
	}
	defer res.Release()
	if err := res.MapAt(2*PageSize, r.FD(), int64(2*PageSize), PageSize, true); err != nil {
		t.Fatal(err)
	}
	res.Bytes()[2*PageSize+7] = 9
	if whole.Bytes()[2*PageSize+7] != 9 {
		t.Fatal("reservation segment is not the file's memory")
	}
	if err := res.UnmapAt(2*PageSize, PageSize); err != nil {
		t.Fatal(err)
	}
	if err := res.MapAt(3*PageSize, r.FD(), 0, 2*PageSize, true); err == nil {
		t.Fatal("mapping past the reservation accepted")
	}
}

func TestEventFD(t *testing.T) {
	e, err := NewEventFD()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Wait(10 * time.Millisecond); !errors.Is(err, ErrTimeout) {
		t.Fatalf("wait with nothing signalled: %v", err)
	}
	e.Signal()
	e.Signal()
	if n, err := e.Wait(time.Second); err != nil || n != 2 {
		t.Fatalf("wait: %d, %v", n, err)
	}
	done := make(chan error)
	go func() { _, err := e.Wait(0); done <- err }()
	e.Close()
	if err := <-done; !errors.Is(err, ErrClosed) {
		t.Fatalf("close did not unblock wait: %v", err)
	}
}

func TestPassFDs(t *testing.T) {
	a, b, err := SocketPair()
	if err != nil {
		t.Fatal(err)
	}
	ca, err := UnixConn(a)
	a.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer ca.Close()
	cb, err := UnixConn(b)
	b.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer cb.Close()
	r, err := NewRegion(RegionOptions{Name: "pass", Size: PageSize})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := SendFDs(ca, []byte("hello"), []int{r.FD()}); err != nil {
		t.Fatal(err)
	}
	msg, fds, err := RecvFDs(cb, 64)
	if err != nil {
		t.Fatal(err)
	}
	defer CloseFD(fds[0])
	if string(msg) != "hello" || len(fds) != 1 {
		t.Fatalf("got %q with %d fds", msg, len(fds))
	}
	if n, err := FileSize(fds[0]); err != nil || n != int64(PageSize) {
		t.Fatalf("received fd: size %d, %v", n, err)
	}
}
