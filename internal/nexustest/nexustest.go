// Package nexustest builds the in-memory world that tests of apps on a
// nexus share: a nexus at 198.18.0.1 on one end of a memif wire (the
// nexus under test, e.g. serving its control socket) and, at the other
// end, a nexus at 198.18.0.2 with a user-space stack in this process as
// the peer (the test's client).
//
// Invariant: everything it makes is closed by the test's Cleanup, the
// peer's stack before its nexus.
package nexustest

import (
	"net/netip"
	"testing"

	"github.com/skylane/skylane/client"
	"github.com/skylane/skylane/netif/memif"
	"github.com/skylane/skylane/nexus"
	"github.com/skylane/skylane/nexus/inproc"
)

// Addresses of the two ends (198.18.0.0/15 is for benchmarking, RFC 2544).
var (
	ServerAddr = netip.MustParseAddr("198.18.0.1")
	PeerAddr   = netip.MustParseAddr("198.18.0.2")
)

// Pair is the world: Nexus under test, Peer the client stack.
type Pair struct {
	Nexus *nexus.Nexus
	Peer  *client.Stack
}

// NewPair makes a Pair whose memif wire is named name.
func NewPair(t testing.TB, name string) *Pair {
	t.Helper()
	la, lb, err := memif.NewPair(memif.Options{Name: name})
	if err != nil {
		t.Fatal(err)
	}
	p := &Pair{}
	if p.Nexus, err = nexus.New(nexus.Options{Link: la, Addrs: []netip.Addr{ServerAddr}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Nexus.Close() })
	nb, err := nexus.New(nexus.Options{Link: lb, Addrs: []netip.Addr{PeerAddr}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nb.Close() })
	if p.Peer, err = client.New(inproc.Nexus(nb), client.Options{Name: "peer"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Peer.Close() })
	return p
}
