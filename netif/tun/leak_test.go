package tun_test

import (
	"errors"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/gopacket/gopacket/layers"

	"github.com/skylane/skylane/internal/nettest"
	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/netif/tun"
)

// TestCloseRaces closes devices while a reader (Wait, Read) and a writer
// are busy on them, many times: every call returns, ErrClosed once closed,
// and no fd is left behind.
func TestCloseRaces(t *testing.T) {
	nettest.RequirePriv(t)
	ns := nettest.NewNS(t)
	open := func() *tun.Link {
		var l *tun.Link
		if err := ns.Do(func() (err error) {
			l, err = tun.New(tun.Options{Addrs: []netip.Prefix{kernel4}})
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return l
	}
	open().Close() // the runtime's own fds (epoll) are open from here on
	fds := nettest.OpenFDs(t)
	pkt := build(t, user4, kernel4.Addr(), &layers.UDP{SrcPort: 1, DstPort: 9}, []byte("race"))
	for range 20 {
		l := open()
		var wg sync.WaitGroup
		wg.Add(2)
		go func() {
			defer wg.Done()
			bufs, sizes := [][]byte{make([]byte, l.MaxSuperPacketLen())}, []int{0}
			for range 10000 {
				if err := l.Wait(time.Millisecond); err != nil {
					if !errors.Is(err, netif.ErrClosed) {
						t.Errorf("Wait: %v", err)
					}
					return
				}
				if _, err := l.Read(bufs, sizes); errors.Is(err, netif.ErrClosed) {
					return
				}
			}
		}()
		go func() {
			defer wg.Done()
			for range 10000 {
				if _, err := l.Write([][]byte{pkt}); err != nil {
					if !errors.Is(err, netif.ErrClosed) {
						t.Errorf("Write: %v", err)
					}
					return
				}
			}
		}()
		time.Sleep(2 * time.Millisecond) // let them get going; Close is tested wherever they are
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		wg.Wait()
	}
	if got := nettest.OpenFDs(t); got != fds {
		t.Errorf("%d fds open, %d before", got, fds)
	}
}

// TestNoAllocs: Read (with nothing waiting and with a frame), Write and a
// zero Wait allocate nothing.
func TestNoAllocs(t *testing.T) {
	_, l := newTUN(t, tun.Options{})
	pkt := build(t, user4, kernel4.Addr(), &layers.UDP{SrcPort: 1, DstPort: 9}, []byte("alloc"))
	frames := [][]byte{pkt}
	bufs, sizes := [][]byte{make([]byte, l.MaxSuperPacketLen())}, []int{0}
	allocs := testing.AllocsPerRun(200, func() {
		_, _ = l.Write(frames)
		_ = l.Wait(0)
		_, _ = l.Read(bufs, sizes)
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per Write+Wait+Read", allocs)
	}
}
