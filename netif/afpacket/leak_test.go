package afpacket_test

import (
	"errors"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gopacket/gopacket/layers"

	"github.com/skylane/skylane/internal/nettest"
	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/netif/afpacket"
	"github.com/skylane/skylane/packet"
)

// ringMappings counts the mappings of packet sockets' rings: they show in
// /proc/self/maps with the socket as their file.
func ringMappings(t testing.TB) int {
	b, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), "socket:[")
}

// TestCloseRaces closes links while a reader (Wait, Read), a writer (plain
// frames and super packets), a Stats poller and a steerer are busy on them,
// many times, in both transmit modes, with and without steering: every call
// returns (ErrClosed once closed), nothing touches the ring, the super
// packet socket or the flow map after it is released (the race detector
// and the kernel would say), and no fd, mapping or TC program is left.
func TestCloseRaces(t *testing.T) {
	nettest.RequirePriv(t)
	v := nettest.NewVeth(t, nettest.VethOptions{})
	configs := []afpacket.Options{
		{TxMode: afpacket.TxRing, Steer: true},
		{TxMode: afpacket.TxSendmmsg},
		{TxMode: afpacket.TxRing},
		{TxMode: afpacket.TxSendmmsg, Steer: true},
	}
	round := 0
	open := func() *afpacket.Link {
		o := configs[round%len(configs)]
		round++
		o.Interface, o.NumBlocks, o.TxFrames = v.LocalName, 2, 64
		var l *afpacket.Link
		if err := v.Local.Do(func() (err error) {
			l, err = afpacket.New(o)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return l
	}
	// Warm up whatever the runtime opens once (epoll, netlink for the
	// interface lookup, BPF feature probes) before counting.
	for range configs {
		open().Close()
	}
	if l := open(); ringMappings(t) == 0 {
		t.Fatal("an open link's ring does not show in /proc/self/maps: the check below would prove nothing")
	} else {
		l.Close()
	}
	fds := nettest.OpenFDs(t)
	frame := udpFrame(t, v.LocalMAC, v.PeerMAC, netip.AddrPortFrom(v.LocalAddr.Addr(), 1),
		netip.AddrPortFrom(v.PeerAddr.Addr(), 9), []byte("race"))
	super := ethFrame(t, v.LocalMAC, v.PeerMAC, v.LocalAddr.Addr(), v.PeerAddr.Addr(),
		&layers.TCP{SrcPort: 1, DstPort: 9, ACK: true}, make([]byte, 10000))
	key := packet.MakeKey(packet.ProtoUDP, netip.AddrPortFrom(v.LocalAddr.Addr(), 1), netip.AddrPort{})
	for range 20 {
		l := open()
		var wg sync.WaitGroup
		wg.Add(4)
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
			for i := range 10000 {
				f := frame
				if i%8 == 0 {
					f = super
				}
				if _, err := l.Write([][]byte{f}); err != nil {
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
		go func() { // steerer
			defer wg.Done()
			for range 1000 {
				if err := l.SteerFlow(key); errors.Is(err, netif.ErrClosed) {
					return
				} else if err != nil && !errors.Is(err, afpacket.ErrNoSteering) {
					t.Errorf("SteerFlow: %v", err)
					return
				}
				if err := l.UnsteerFlow(key); err != nil && !errors.Is(err, netif.ErrClosed) {
					t.Errorf("UnsteerFlow: %v", err)
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
	if got := ringMappings(t); got != 0 {
		t.Errorf("%d ring mappings left", got)
	}
	if n := tcxPrograms(t, v); n != 0 {
		t.Errorf("%d TC programs left attached", n)
	}
}

// TestNoAllocs: Write (of a plain frame and a super packet), a zero Wait
// and Read allocate nothing, in both transmit modes.
func TestNoAllocs(t *testing.T) {
	for _, mode := range []afpacket.TxMode{afpacket.TxRing, afpacket.TxSendmmsg} {
		v, l := newLink(t, nettest.VethOptions{}, afpacket.Options{TxMode: mode})
		frames := [][]byte{udpFrame(t, v.LocalMAC, v.PeerMAC, netip.AddrPortFrom(v.LocalAddr.Addr(), 1),
			netip.AddrPortFrom(v.PeerAddr.Addr(), 9), []byte("alloc")),
			ethFrame(t, v.LocalMAC, v.PeerMAC, v.LocalAddr.Addr(), v.PeerAddr.Addr(),
				&layers.TCP{SrcPort: 1, DstPort: 9, ACK: true}, make([]byte, 10000))}
		bufs, sizes := [][]byte{make([]byte, l.MaxSuperPacketLen())}, []int{0}
		allocs := testing.AllocsPerRun(200, func() {
			if n, err := l.Write(frames); n != len(frames) || err != nil {
				t.Fatalf("write: %d, %v", n, err)
			}
			_ = l.Wait(0)
			_, _ = l.Read(bufs, sizes)
		})
		if allocs != 0 {
			t.Fatalf("mode %d: %v allocations per Write+Wait+Read", mode, allocs)
		}
	}
}
