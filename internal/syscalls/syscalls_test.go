package syscalls

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestTryLock(t *testing.T) {
	p := filepath.Join(t.TempDir(), "lock")
	a, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if err := TryLock(a); err != nil {
		t.Fatalf("first lock: %v", err)
	}
	b, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := TryLock(b); !errors.Is(err, ErrLocked) {
		t.Fatalf("second lock of a held file: %v, want ErrLocked", err)
	}
	a.Close() // releases the lock
	if err := TryLock(b); err != nil {
		t.Fatalf("lock after release: %v", err)
	}
}

func TestUDPBatch(t *testing.T) {
	addr := netip.MustParseAddrPort("127.0.0.1:0")
	if _, err := ListenUDPBatch(netip.MustParseAddrPort("[::1]:0"), 4, 64, 0, time.Millisecond); err == nil {
		t.Fatal("an IPv6 address was taken")
	}
	// Find a free port, then bind the batch socket to it.
	c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(addr))
	if err != nil {
		t.Fatal(err)
	}
	addr = c.LocalAddr().(*net.UDPAddr).AddrPort()
	c.Close()
	b, err := ListenUDPBatch(addr, 4, 64, 1<<20, 20*time.Millisecond)
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	defer b.Close()
	if n, err := b.Recv(); n != 0 || err != nil {
		t.Fatalf("recv with nothing queued: %d, %v; want 0, nil after the wait", n, err)
	}
	s, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(addr))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for range 6 {
		if _, err := s.Write([]byte("skylane")); err != nil {
			t.Fatal(err)
		}
	}
	// Loopback delivers synchronously: all six are queued; a batch takes
	// at most four.
	got := 0
	for i := 0; i < 10 && got < 6; i++ {
		n, err := b.Recv()
		if err != nil || n > 4 {
			t.Fatalf("recv: %d, %v", n, err)
		}
		got += n
	}
	if got != 6 {
		t.Fatalf("received %d datagrams, want 6", got)
	}
}

func TestProcessCPU(t *testing.T) {
	a, err := ProcessCPU()
	if err != nil {
		t.Fatal(err)
	}
	// Burn CPU until the process's clock moves, a few seconds at most.
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); {
		if b, err := ProcessCPU(); err != nil || b > a {
			return
		}
	}
	t.Fatal("the process's CPU time did not move in 5s of spinning")
}

func TestLinkFlags(t *testing.T) {
	// Values of <linux/rtnetlink.h> and <linux/if.h>.
	if !LinkDeleted(17) || LinkDeleted(16) {
		t.Error("RTM_DELLINK is 17, RTM_NEWLINK 16")
	}
	if !LinkUp(1) || LinkUp(0x10000) {
		t.Error("IFF_UP is 0x1")
	}
	if !LinkCarrier(0x10001) || LinkCarrier(1) {
		t.Error("IFF_LOWER_UP is 0x10000")
	}
}
