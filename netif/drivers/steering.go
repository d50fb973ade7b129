package drivers

import (
	"errors"
	"fmt"
	"sync"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/client"
	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/netif/afpacket"
	"github.com/skylane/skylane/netif/steer"
	"github.com/skylane/skylane/nexus"
	"github.com/skylane/skylane/packet"
)

// Steering returns nx as a client.Nexus whose ports keep the device's
// steering in step with their flows, and refuse listeners on ports a
// kernel socket holds (ports may be nil: no such check).
//
// It is a stopgap. The nexus does not yet call steer.FlowSteerer on its
// link, nor pass a PortTaken to its flow table: without this wrapper no
// packet of a user-space flow reaches AF_XDP (the XDP program passes what
// is not in its map), and over AF_PACKET the kernel answers those flows
// too (a RST to every SYN). Once the nexus does both itself (on Register
// and Teardown, on a port's close and when a channel turns defunct), use
// client.InProcess(nx) and delete this. Steering twice is harmless in the
// meantime: adding a key twice and removing a missing key are no-ops.
//
// What it cannot do from outside the nexus: unsteer the flows of a port
// whose channel the nexus closed on its own (defunct, link failure) before
// the port's Close, which the client always calls eventually.
func Steering(nx *nexus.Nexus, link netif.Link, ports *KernelPorts) client.Nexus {
	s, _ := link.(steer.FlowSteerer)
	return steering{nx: nx, steer: s, ports: ports}
}

type steering struct {
	nx    *nexus.Nexus
	steer steer.FlowSteerer // nil: the device hands every packet over (TUN, memif)
	ports *KernelPorts
}

func (s steering) OpenPort(name string) (client.Port, error) {
	p, err := s.nx.OpenPortWith(name, nexus.PortOptions{Advisories: true})
	if err != nil {
		return nil, err
	}
	return &steeredPort{Port: p, s: s, flows: make(map[packet.Key]struct{})}, nil
}

// steeredPort is a nexus port whose flows are also in the device's steering
// map for as long as they are registered.
type steeredPort struct {
	*nexus.Port
	s     steering
	mu    sync.Mutex
	flows map[packet.Key]struct{} // steered keys, guarded by mu
}

// Register checks the kernel's sockets for a listener (only a listener can
// take a kernel socket's traffic: a steered 5-tuple matches its own
// packets only), registers the flow with the nexus, then steers it, before
// the caller sends its first packet.
func (p *steeredPort) Register(key packet.Key, kind flow.Kind) (channel.FlowInfo, error) {
	if p.s.ports != nil && kind != flow.Connected {
		if who, taken := p.s.ports.Holder(key.Proto, key.LocalPort); taken {
			return channel.FlowInfo{}, fmt.Errorf("port %s: register %v: held by a kernel socket (%s): %w; stop that socket or use another port",
				p.Name(), key, who, flow.ErrPortInUse)
		}
	}
	id, err := p.Port.Register(key, kind)
	if err != nil || p.s.steer == nil {
		return id, err
	}
	if err := p.s.steer.SteerFlow(key); err != nil {
		if errors.Is(err, afpacket.ErrNoSteering) {
			// An AF_PACKET link opened as a plain tap (ModeTap): the
			// kernel has no address there, nothing to keep it off.
			return id, nil
		}
		terr := p.Port.Teardown(key)
		return channel.FlowInfo{}, errors.Join(fmt.Errorf("port %s: steer %v to user space: %w", p.Name(), key, err), terr)
	}
	p.mu.Lock()
	p.flows[key] = struct{}{}
	p.mu.Unlock()
	return id, nil
}

// Teardown tears the flow down in the nexus (its last packets go first),
// then gives its packets back to the kernel.
func (p *steeredPort) Teardown(key packet.Key) error {
	err := p.Port.Teardown(key)
	p.mu.Lock()
	_, steered := p.flows[key]
	delete(p.flows, key)
	p.mu.Unlock()
	if steered {
		if uerr := p.s.steer.UnsteerFlow(key); uerr != nil && !errors.Is(uerr, netif.ErrClosed) {
			err = errors.Join(err, fmt.Errorf("port %s: unsteer %v: %w", p.Name(), key, uerr))
		}
	}
	return err
}

// Close closes the nexus port (which tears its flows down) and unsteers
// every flow it still had. A link already closed has dropped its map.
func (p *steeredPort) Close() error {
	err := p.Port.Close()
	p.mu.Lock()
	keys := p.flows
	p.flows = make(map[packet.Key]struct{})
	p.mu.Unlock()
	for k := range keys {
		if uerr := p.s.steer.UnsteerFlow(k); uerr != nil && !errors.Is(uerr, netif.ErrClosed) && !errors.Is(uerr, steer.ErrClosed) {
			err = errors.Join(err, fmt.Errorf("port %s: unsteer %v: %w", p.Name(), k, uerr))
		}
	}
	return err
}
