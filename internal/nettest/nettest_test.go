package nettest

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestVethCarriesTraffic sends UDP from a kernel socket in the local
// namespace to one in the peer namespace and back, then checks that the
// namespaces are gone once the subtest's cleanup ran.
func TestVethCarriesTraffic(t *testing.T) {
	RequirePriv(t)
	var names []string
	t.Run("pair", func(t *testing.T) {
		v := NewVeth(t, VethOptions{})
		names = []string{v.Local.Name, v.Peer.Name}
		var srv net.PacketConn
		if err := v.Peer.Do(func() (err error) {
			srv, err = net.ListenPacket("udp4", v.PeerAddr.Addr().String()+":0")
			return err
		}); err != nil {
			t.Fatalf("listen in peer: %v", err)
		}
		defer srv.Close()
		var cli net.Conn
		if err := v.Local.Do(func() (err error) {
			cli, err = net.Dial("udp4", srv.LocalAddr().String())
			return err
		}); err != nil {
			t.Fatalf("dial from local: %v", err)
		}
		defer cli.Close()
		deadline := time.Now().Add(10 * time.Second)
		_ = srv.SetDeadline(deadline)
		_ = cli.SetDeadline(deadline)
		if _, err := cli.Write([]byte("ping")); err != nil {
			t.Fatalf("send: %v", err)
		}
		buf := make([]byte, 16)
		n, from, err := srv.ReadFrom(buf)
		if err != nil || string(buf[:n]) != "ping" {
			t.Fatalf("peer read %q, %v", buf[:n], err)
		}
		if got := from.(*net.UDPAddr).IP.String(); got != v.LocalAddr.Addr().String() {
			t.Fatalf("source %s, want %s", got, v.LocalAddr.Addr())
		}
		if _, err := srv.WriteTo([]byte("pong"), from); err != nil {
			t.Fatalf("reply: %v", err)
		}
		if n, err := cli.Read(buf); err != nil || string(buf[:n]) != "pong" {
			t.Fatalf("local read %q, %v", buf[:n], err)
		}
	})
	for _, n := range names {
		if _, err := os.Stat(filepath.Join("/var/run/netns", n)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("namespace %s left behind (stat: %v)", n, err)
		}
	}
}
