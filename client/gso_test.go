package client_test

import (
	"net"
	"sync/atomic"
	"testing"

	"github.com/skylane/skylane/flowswitch"
	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/netif/memif"
	"github.com/skylane/skylane/nexus"
	"github.com/skylane/skylane/packet"
	"github.com/skylane/skylane/pool"
)

// TestTCPSuperPackets streams 8 MiB between two stacks, byte-exact, over a
// wire that carries super packets whole (memif with MaxSuperPacketLen) and
// over one that does not:
//
//   - whole: the sender's endpoint puts netstack's GSO packets whole on its
//     TX ring, its nexus hands them to the wire whole (TxSuper, nothing
//     cut), the frames on the wire average above the MTU, and the
//     receiving nexus delivers them without cutting them (no Split);
//   - cut: the same super packets leave the sending nexus cut into MTU
//     segments (TxSegmented, TxSegments), which the receiving nexus merges
//     again (SuperPackets).
func TestTCPSuperPackets(t *testing.T) {
	const size = 8 << 20
	for _, tc := range []struct {
		name  string
		mo    memif.Options
		whole bool
	}{
		{"whole", memif.Options{Name: "w", MaxSuperPacketLen: pool.MaxBufferSize + netif.EthernetHeaderLen, QueueLen: 512}, true},
		{"cut", memif.Options{Name: "w", QueueLen: 4096}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorldOn(t, nexus.Options{}, tc.mo)
			ln, err := w.sa.Listen("tcp4", ":5001")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			done := make(chan error, 1)
			var got atomic.Int64
			go func() {
				c, err := ln.Accept()
				if err != nil {
					done <- err
					return
				}
				defer c.Close()
				done <- readStream(c, &got, 0, nil)
			}()
			c, err := w.sb.Dial("tcp4", net.JoinHostPort(addrA4.String(), "5001"))
			if err != nil {
				t.Fatal(err)
			}
			writeStream(c, size)
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			if got.Load() != size {
				t.Fatalf("received %d bytes, want %d", got.Load(), size)
			}
			sa, err := w.na.Stats()
			if err != nil {
				t.Fatal(err)
			}
			sb, err := w.nb.Stats()
			if err != nil {
				t.Fatal(err)
			}
			send := w.sb.Endpoint().Stats()
			tx, rx := sb.Switch, sa.Switch
			t.Logf("sender: %d GSO packets; nexus: whole %d, cut %d into %d; receiver nexus: %d frames, %d merged super packets, split %d; wire %d frames, %d bytes",
				send.TxGSO, tx.TxSuper, tx.TxSegmented, tx.TxSegments, rx.Packets, rx.SuperPackets, rx.Split, sa.Link.RxPackets, sa.Link.RxBytes)
			if send.TxGSO == 0 || send.TxOversize != 0 {
				t.Errorf("sender endpoint: %d super packets, %d oversize", send.TxGSO, send.TxOversize)
			}
			if tx.TxDrops != (flowswitch.TxDrops{}) || rx.TxDrops != (flowswitch.TxDrops{}) {
				t.Errorf("transmit drops: %+v, %+v", tx.TxDrops, rx.TxDrops)
			}
			if tc.whole {
				if tx.TxSuper == 0 || tx.TxSegmented != 0 || rx.Split != 0 {
					t.Errorf("whole: TxSuper %d, TxSegmented %d, Split %d", tx.TxSuper, tx.TxSegmented, rx.Split)
				}
				if avg := sa.Link.RxBytes / max(sa.Link.RxPackets, 1); avg <= uint64(netif.MaxFrameLen(1500, packet.Ethernet)) {
					t.Errorf("frames on the wire average %d bytes: not super packets", avg)
				}
			} else {
				if tx.TxSuper != 0 || tx.TxSegmented == 0 || tx.TxSegments <= tx.TxSegmented || rx.SuperPackets == 0 {
					t.Errorf("cut: TxSuper %d, TxSegmented %d into %d, merged %d", tx.TxSuper, tx.TxSegmented, tx.TxSegments, rx.SuperPackets)
				}
			}
		})
	}
}
