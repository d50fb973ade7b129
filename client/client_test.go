package client_test

import (
	"bytes"
	"io"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/refs"

	"github.com/skylane/skylane/client"
	"github.com/skylane/skylane/netif/memif"
	"github.com/skylane/skylane/nexus"
	"github.com/skylane/skylane/nexus/inproc"
)

// TestMain fails the run if any netstack PacketBuffer (or buffer chunk)
// is still referenced once every test has closed its stacks. Re-run with
// childEnv set, the binary is an app process of the cross-process tests;
// with nexusChildEnv set, a nexus process of the lifecycle tests.
func TestMain(m *testing.M) {
	if path := os.Getenv(childEnv); path != "" {
		os.Exit(runChild(path))
	}
	if path := os.Getenv(nexusChildEnv); path != "" {
		os.Exit(runNexusChild(path, os.Getenv(peerEnv)))
	}
	refs.SetLeakMode(refs.LeaksPanic)
	code := m.Run()
	refs.DoLeakCheck()
	os.Exit(code)
}

// Two hosts on one in-memory wire, each a nexus with one address per
// family (RFC 2544 benchmarking and RFC 3849 documentation prefixes).
var (
	addrA4 = netip.MustParseAddr("198.18.0.1")
	addrB4 = netip.MustParseAddr("198.18.0.2")
	addrA6 = netip.MustParseAddr("2001:db8::1")
	addrB6 = netip.MustParseAddr("2001:db8::2")
)

type world struct {
	na, nb *nexus.Nexus
	sa, sb *client.Stack
}

func newWorld(t testing.TB) *world { return newWorldWith(t, nexus.Options{}) }

// newWorldWith builds the two hosts; o's Link and Addrs are set per host.
func newWorldWith(t testing.TB, o nexus.Options) *world {
	t.Helper()
	return newWorldOn(t, o, memif.Options{Name: "w"})
}

// newWorldOn is newWorldWith on a wire of options mo.
func newWorldOn(t testing.TB, o nexus.Options, mo memif.Options) *world {
	t.Helper()
	la, lb, err := memif.NewPair(mo)
	if err != nil {
		t.Fatal(err)
	}
	w := &world{}
	o.Link, o.Addrs = la, []netip.Addr{addrA4, addrA6}
	if w.na, err = nexus.New(o); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.na.Close() })
	o.Link, o.Addrs = lb, []netip.Addr{addrB4, addrB6}
	if w.nb, err = nexus.New(o); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.nb.Close() })
	if w.sa, err = client.New(inproc.Nexus(w.na), client.Options{Name: "a"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.sa.Close() })
	if w.sb, err = client.New(inproc.Nexus(w.nb), client.Options{Name: "b"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.sb.Close() })
	return w
}

func echoServer(t testing.TB, ln net.Listener) {
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
}

func TestTCPEcho(t *testing.T) {
	w := newWorld(t)
	ln, err := w.sa.Listen("tcp", "198.18.0.1:7")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	echoServer(t, ln)
	c, err := w.sb.Dial("tcp", "198.18.0.1:7")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	msg := bytes.Repeat([]byte("skylane "), 100000)
	go c.Write(msg)
	got := make([]byte, len(msg))
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatal("echo differs")
	}
	t.Logf("a: %+v", w.sa.Endpoint().Stats())
	t.Logf("b: %+v", w.sb.Endpoint().Stats())
	st, _ := w.nb.Stats()
	t.Logf("nexus b: %+v", st.Switch)
}
