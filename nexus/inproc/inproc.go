// Package inproc joins an app's client.Stack to a nexus running in the
// same process: it is the one package that imports both sides, so that
// apps, which import only client, never link the nexus.
//
//	nx, _ := nexus.New(nexus.Options{Link: link, Addrs: addrs})
//	st, _ := client.New(inproc.Nexus(nx), client.Options{Name: "web"})
//
// Invariants: a port it opens honours flow advisories (a Stack's endpoint
// holds a suspended flow's packets back), so the nexus suspends its flows
// rather than dropping their packets; and its Gone channel closes when the
// nexus closes, so that the Stack fails its connections with
// client.ErrNexusGone as it does for a nexus in another process.
package inproc

import (
	"github.com/skylane/skylane/client"
	"github.com/skylane/skylane/nexus"
)

// Nexus returns the client.Nexus of n, a nexus in this process. Its ports
// are opened with nexus.PortOptions.Advisories.
func Nexus(n *nexus.Nexus) client.Nexus { return local{n} }

type local struct{ n *nexus.Nexus }

// OpenPort implements client.Nexus.OpenPort.
func (l local) OpenPort(name string) (client.Port, error) {
	p, err := l.n.OpenPortWith(name, nexus.PortOptions{Advisories: true})
	if err != nil {
		return nil, err
	}
	return port{p, l.n}, nil
}

// port is a nexus port that says when its nexus is gone.
type port struct {
	*nexus.Port
	n *nexus.Nexus
}

// Gone is closed when the nexus has closed.
func (p port) Gone() <-chan struct{} { return p.n.Done() }

// Err returns nil while the nexus runs, then nexus.ErrClosed (which is
// client.ErrNexusGone too).
func (p port) Err() error {
	select {
	case <-p.n.Done():
		return nexus.ErrClosed
	default:
		return nil
	}
}

var (
	_ client.Nexus = local{}
	_ client.Port  = port{}
)
