package afpacket_test

import (
	"errors"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/skylane/skylane/internal/nettest"
	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/netif/afpacket"
)

// openFDs and mappings count the process's file descriptors and memory
// mappings.
func openFDs(t testing.TB) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// ringMappings counts the mappings of packet sockets' rings: they show in
// /proc/self/maps with the socket as their file.
func ringMappings(t testing.TB) int {
	b, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), "socket:[")
}

// TestCloseRaces closes links while a reader (Wait, Read), a writer and a
// Stats poller are busy on them, many times: every call returns (ErrClosed
// once closed), nothing touches the ring after it is unmapped (the race
// detector and the kernel would say), and no fd or mapping is left.
func TestCloseRaces(t *testing.T) {
	nettest.RequirePriv(t)
	v := nettest.NewVeth(t, nettest.VethOptions{})
	open := func() *afpacket.Link {
		var l *afpacket.Link
		if err := v.Local.Do(func() (err error) {
			l, err = afpacket.New(afpacket.Options{Interface: v.LocalName, NumBlocks: 2, TxFrames: 64})
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return l
	}
	// Warm up whatever the runtime opens once (epoll, netlink for the
	// interface lookup) before counting.
	open().Close()
	if l := open(); ringMappings(t) == 0 {
		t.Fatal("an open link's ring does not show in /proc/self/maps: the check below would prove nothing")
	} else {
		l.Close()
	}
	fds := openFDs(t)
	frame := udpFrame(t, v.LocalMAC, v.PeerMAC, netip.AddrPortFrom(v.LocalAddr.Addr(), 1),
		netip.AddrPortFrom(v.PeerAddr.Addr(), 9), []byte("race"))
	for range 20 {
		l := open()
		var wg sync.WaitGroup
		wg.Add(3)
		go func() { // reader
			defer wg.Done()
			bufs, sizes := [][]byte{make([]byte, 2048)}, []int{0}
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
		go func() { // writer
			defer wg.Done()
			for range 10000 {
				if _, err := l.Write([][]byte{frame}); err != nil {
					if !errors.Is(err, netif.ErrClosed) {
						t.Errorf("Write: %v", err)
					}
					return
				}
			}
		}()
		go func() { // stats
			defer wg.Done()
			for range 1000 {
				_ = l.Stats()
			}
		}()
		time.Sleep(2 * time.Millisecond) // let them get going; Close is tested wherever they are
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		wg.Wait()
	}
	if got := openFDs(t); got != fds {
		t.Errorf("%d fds open, %d before", got, fds)
	}
	if got := ringMappings(t); got != 0 {
		t.Errorf("%d ring mappings left", got)
	}
}

// TestNoAllocs: Write, a zero Wait and Read allocate nothing, in both
// transmit modes.
func TestNoAllocs(t *testing.T) {
	for _, mode := range []afpacket.TxMode{afpacket.TxRing, afpacket.TxSendmmsg} {
		v, l := newLink(t, nettest.VethOptions{}, afpacket.Options{TxMode: mode})
		frames := [][]byte{udpFrame(t, v.LocalMAC, v.PeerMAC, netip.AddrPortFrom(v.LocalAddr.Addr(), 1),
			netip.AddrPortFrom(v.PeerAddr.Addr(), 9), []byte("alloc"))}
		bufs, sizes := [][]byte{make([]byte, l.MaxSuperPacketLen())}, []int{0}
		allocs := testing.AllocsPerRun(200, func() {
			_, _ = l.Write(frames)
			_ = l.Wait(0)
			_, _ = l.Read(bufs, sizes)
		})
		if allocs != 0 {
			t.Fatalf("mode %d: %v allocations per Write+Wait+Read", mode, allocs)
		}
	}
}
