package client_test

import (
	"bytes"
	"fmt"
	"net/netip"
	"testing"
	"time"
)

// TestUDPFragments echoes datagrams of 2 KiB to 60 KiB between two
// user-space stacks, IPv4 and IPv6: each leaves B's stack in fragments
// (checked by nexus B, the first by its ports, the others as part of its
// datagram), is reassembled by nexus A and delivered to A's socket as its
// fragments, and the echo comes back the same way.
func TestUDPFragments(t *testing.T) {
	w := newWorld(t)
	srv, err := w.sa.ListenPacket("udp", ":9")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := srv.ReadFrom(buf)
			if err != nil {
				return
			}
			srv.WriteTo(buf[:n], from)
		}
	}()
	for _, dst := range []netip.AddrPort{netip.AddrPortFrom(addrA4, 9), netip.AddrPortFrom(addrA6, 9)} {
		c, err := w.sb.Dial("udp", dst.String())
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 65536)
		for _, size := range []int{2048, 4096, 16384, 32768, 61440} {
			msg := bytes.Repeat([]byte(fmt.Sprintf("%6d", size)), size/6)
			c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Write(msg); err != nil {
				t.Fatal(err)
			}
			n, err := c.Read(buf)
			if err != nil || !bytes.Equal(buf[:n], msg) {
				t.Fatalf("%v, %d bytes: got %d bytes, %v", dst, len(msg), n, err)
			}
		}
		c.Close()
	}
	st, err := w.na.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Switch.Reassembled != 10 || st.Switch.TxDrops.Total() != 0 {
		t.Errorf("nexus A reassembled %d datagrams (want 10), tx drops %+v", st.Switch.Reassembled, st.Switch.TxDrops)
	}
}
