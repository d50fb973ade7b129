package e2e

import (
	"context"
	"errors"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/skylane/skylane/internal/nettest"
)

// TestServeTap: `skylane serve --driver afpacket --mode tap` on an
// interface where the kernel has no address serves the peer's curl (the
// nexus answers ARP for its address and resolves the peer itself: no
// --peer-mac), answers its ping and refuses a closed port with a reset,
// as a host; on an interface where the kernel has an address, tap mode
// refuses to start (the kernel would reset every connection).
func TestServeTap(t *testing.T) {
	nettest.RequirePriv(t)
	nettest.RequireCommand(t, "ping")
	bin := skylaneBinary(t)

	busy := nettest.NewVeth(t, nettest.VethOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	out, err := busy.Local.Command(ctx, bin, "serve", "--driver", "afpacket", "--mode", "tap", "--dev", busy.LocalName,
		"--addr", "198.18.0.1:8080").CombinedOutput()
	cancel()
	if err == nil || !strings.Contains(string(out), "--mode steer") {
		t.Errorf("tap mode on an interface with kernel addresses: %v: %s", err, out)
	}

	v := nettest.NewVeth(t, nettest.VethOptions{NoLocalAddr: true})
	startServeProc(t, v.Local, bin, "--driver", "afpacket", "--mode", "tap", "--dev", v.LocalName, "--addr", "198.18.0.1:8080")
	for range 3 {
		if out := curl(t, v.Peer, "http://198.18.0.1:8080/"); !strings.HasPrefix(out, "hello from skylane") {
			t.Fatalf("curl: %q", out)
		}
	}
	ctx, cancel = context.WithTimeout(context.Background(), opTimeout)
	out, err = v.Peer.Command(ctx, "ping", "-c", "2", "-i", "0.2", "-W", "2", "198.18.0.1").CombinedOutput()
	cancel()
	if err != nil || !strings.Contains(string(out), "2 received") {
		t.Fatalf("ping: %v: %s", err, out)
	}
	err = v.Peer.Do(func() error {
		c, err := net.DialTimeout("tcp", "198.18.0.1:8081", 2*time.Second)
		if err == nil {
			c.Close()
			return errors.New("connected to a closed port")
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return err
		}
		return nil
	})
	if err != nil {
		t.Fatalf("closed port: %v, want connection refused", err)
	}
}
