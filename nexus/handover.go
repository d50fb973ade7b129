package nexus

import (
	"errors"
	"fmt"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/flowswitch"
	"github.com/skylane/skylane/internal/shm"
	"github.com/skylane/skylane/packet"
)

// Handing a running nexus to another process (a takeover,
// docs/upgrade.md). The old process freezes its worker (Freeze: no more
// datapath rounds, every waiter disarmed, the device's reader role taken
// back), exports each port's channel and flows, and either thaws (Thaw:
// the takeover failed before its commit; nothing changed) or abandons
// (Abandon: the new process has it all; close every descriptor without
// telling the apps, tearing down no flow and detaching nothing). The new
// process starts a nexus on the adopted link and adopts the ports
// (AdoptPort) before it serves.

// Handover is a frozen nexus's ports, for the process taking over; the
// link travels separately (its driver's own hand-over).
type Handover struct {
	Seq    int              `json:"seq"` // ports opened so far, for channel names
	Ports  []PortHandover   `json:"ports"`
	Switch flowswitch.Stats `json:"switch"` // the switch's own counters (flowswitch.Switch.SaveStats)
}

// PortHandover is one port. Its descriptors are the channel's
// (channel.HandoverFDs), then one per Reserved key.
type PortHandover struct {
	Name    string           `json:"name"` // the channel's name
	Options PortOptions      `json:"options"`
	Channel channel.Handover `json:"channel"`
	Flows   []flow.Saved     `json:"flows"`
	// Reserved are the listener flows whose port the kernel holds for the
	// app (Options.Reserve), in the order of their descriptors.
	Reserved []packet.Key `json:"reserved,omitempty"`
}

// FDs is how many descriptors the port's hand-over has.
func (ph *PortHandover) FDs() int { return channel.HandoverFDs + len(ph.Reserved) }

// ExportableReservation is a Reservation a takeover can hand over
// (drivers.Reservation): a duplicate of its socket for the new process,
// and a close of this process's descriptor that gives the port back to
// no one.
type ExportableReservation interface {
	Reservation
	ExportFD() (int, error)
	Abandon() error
}

// abandonRes lets a reservation go without giving its port back.
func abandonRes(r Reservation) {
	if x, ok := r.(ExportableReservation); ok {
		x.Abandon()
	}
}

// ErrNotTransferable: the nexus has a part a takeover cannot move (an
// app in this process, a host link, a failed link).
var ErrNotTransferable = errors.New("nexus: cannot be handed over")

// interrupter is a link whose Wait can be interrupted without closing it
// (afxdp.Exporter): the frozen worker takes its reader role back.
type interrupter interface{ Interrupt() }

// Freeze stops the datapath between two rounds and exports every port:
// its state and, per port, channel.HandoverFDs duplicated descriptors the
// caller owns (fds[i] is Ports[i]'s). The link is the worker's again (no
// Read or Wait in progress) and stays so until Thaw or Abandon; requests
// are still served meanwhile. On error the nexus runs on, unchanged.
func (n *Nexus) Freeze() (h Handover, fds [][]int, err error) {
	err = n.do(func() error {
		if n.frozen {
			return fmt.Errorf("%w: frozen already (another takeover in progress)", ErrNotTransferable)
		}
		if n.linkErr != nil {
			return fmt.Errorf("%w: its link failed: %w", ErrNotTransferable, n.linkErr)
		}
		if n.host != nil {
			return fmt.Errorf("%w: it has a host link", ErrNotTransferable)
		}
		for _, p := range n.order {
			if !p.remote {
				return fmt.Errorf("%w: port %s has its app in this process", ErrNotTransferable, p.ch.Name())
			}
		}
		if !n.dev.held {
			in, ok := n.link.(interrupter)
			if !ok {
				return fmt.Errorf("%w: link %s cannot be interrupted (only AF_XDP links are handed over)", ErrNotTransferable, n.link.Name())
			}
			in.Interrupt()
			n.dev.held = true
			if err := <-n.dev.done; err != nil {
				n.failLink(err)
				return fmt.Errorf("%w: link %s: %w", ErrNotTransferable, n.link.Name(), err)
			}
		}
		h = Handover{Seq: n.seq, Switch: n.sw.SaveStats()}
		fail := func(err error) error {
			for _, f := range fds {
				for _, fd := range f {
					shm.CloseFD(fd)
				}
			}
			fds = nil
			return err
		}
		for _, p := range n.order {
			ch, f, err := p.ch.Export()
			if err != nil {
				return fail(fmt.Errorf("nexus: freeze port %s: %w", p.ch.Name(), err))
			}
			fds = append(fds, f)
			ph := PortHandover{Name: p.ch.Name(), Options: p.opts, Channel: ch}
			for k, r := range p.res {
				x, ok := r.(ExportableReservation)
				if !ok {
					return fail(fmt.Errorf("%w: port %s's reservation of %v cannot be handed over", ErrNotTransferable, p.ch.Name(), k))
				}
				fd, err := x.ExportFD()
				if err != nil {
					return fail(fmt.Errorf("nexus: freeze port %s: %w", p.ch.Name(), err))
				}
				fds[len(fds)-1] = append(fds[len(fds)-1], fd)
				ph.Reserved = append(ph.Reserved, k)
			}
			n.sw.Do(func() {
				for _, e := range p.flows {
					ph.Flows = append(ph.Flows, e.Save())
				}
			})
			h.Ports = append(h.Ports, ph)
		}
		n.frozen = true
		return nil
	})
	return h, fds, err
}

// Thaw resumes a frozen nexus: the takeover did not commit (the old
// nexus), or it did (the new one, which clears its adopted flows'
// advisories first).
func (n *Nexus) Thaw() error {
	return n.do(func() error {
		for _, a := range n.advClear {
			if n.ports[a.p.id] == a.p {
				a.p.ch.SetAdvisory(int(a.adv), channel.AdvisoryNone) // checked in adoptPort
			}
		}
		n.advClear = nil
		n.frozen = false
		return nil
	})
}

// advClear is an adopted flow's advisory, cleared at Thaw.
type advClear struct {
	p   *port
	adv uint32
}

// Abandon ends a frozen nexus whose state another process took over: the
// worker stops, every channel is unmapped and its descriptors closed
// without a word to its app, no flow is torn down or unsteered, and the
// link is closed (its socket and program live on in the new process).
// Ports handed out by this nexus report ErrClosed afterwards.
func (n *Nexus) Abandon() error {
	err := n.do(func() error {
		if !n.frozen {
			return errors.New("nexus: abandon: not frozen")
		}
		n.abandoned = true
		return nil
	})
	if err != nil {
		return err
	}
	return n.Close()
}

// abandonPorts is shutdown's path after Abandon.
func (n *Nexus) abandonPorts() {
	for _, p := range n.order {
		for _, r := range p.res {
			abandonRes(r)
		}
		p.ch.Abandon()
		if p.remote {
			close(p.armCh)
		}
		p.app.goneOnce.Do(func() { close(p.app.gone) })
	}
	n.order = nil
	clear(n.ports)
}

// AdoptPort adds a port another nexus handed over (Freeze): its channel,
// adopted from fds (channel.HandoverFDs, owned by AdoptPort from now
// on), and its flows with their IDs and advisory slots. The flows are in
// the device's steering map already (it came with the link). Every flow's
// advisory is cleared at Thaw: this switch's regulation holds none of
// their packets, and nothing would clear a suspension the old one left.
// Before Thaw nothing is written to the channel but what the old nexus
// wrote there itself (its indices, its segment bitmap).
func (n *Nexus) AdoptPort(ph PortHandover, fds []int) (*RemotePort, error) {
	if len(fds) != ph.FDs() {
		for _, fd := range fds {
			shm.CloseFD(fd)
		}
		return nil, fmt.Errorf("nexus: adopt port %s: %d descriptors, want %d", ph.Name, len(fds), ph.FDs())
	}
	// The reservations first: they only wrap their sockets.
	res := make(map[packet.Key]Reservation, len(ph.Reserved))
	dropRes := func() {
		for _, r := range res {
			abandonRes(r) // the old nexus's still, if this fails
		}
	}
	rfds := fds[channel.HandoverFDs:]
	for i, k := range ph.Reserved {
		var (
			r   Reservation
			err = fmt.Errorf("%w: no Options.AdoptReservation for its reservations", ErrNotTransferable)
		)
		if n.opts.AdoptReservation != nil {
			r, err = n.opts.AdoptReservation(k, rfds[i]) // owns rfds[i] now
		} else {
			shm.CloseFD(rfds[i])
		}
		if err != nil {
			for _, fd := range append(rfds[i+1:], fds[:channel.HandoverFDs]...) {
				shm.CloseFD(fd)
			}
			dropRes()
			return nil, fmt.Errorf("nexus: adopt port %s: %w", ph.Name, err)
		}
		res[k] = r
	}
	ch, err := channel.Adopt(ph.Channel, fds[:channel.HandoverFDs])
	if err != nil {
		dropRes()
		return nil, fmt.Errorf("nexus: adopt port %s: %w", ph.Name, err)
	}
	var p *Port
	err = n.do(func() error {
		if n.linkErr != nil {
			return n.linkErr
		}
		p, err = n.adoptPort(ph, ch, res)
		return err
	})
	if err != nil {
		// Not Close: the channel still belongs to the old nexus, which
		// serves on if the takeover fails; the app must not be told.
		ch.Abandon()
		dropRes()
		return nil, fmt.Errorf("nexus: adopt port %s: %w", ph.Name, err)
	}
	return &RemotePort{p: p}, nil
}

func (n *Nexus) adoptPort(ph PortHandover, ch *channel.Channel, res map[packet.Key]Reservation) (*Port, error) {
	o := ph.Options
	id, err := n.sw.AddPortWith(ch, flowswitchPortOptions(o))
	if err != nil {
		return nil, err
	}
	entries, err := n.sw.RestoreFlows(id, ph.Flows)
	if err != nil {
		n.sw.RemovePort(id)
		return nil, err
	}
	ap := &Port{n: n, id: id, name: ph.Name, remote: true, bell: make(chan struct{}, 1), gone: make(chan struct{})}
	p := &port{
		n: n, id: id, ch: ch, app: ap, remote: true, opts: o,
		flows: make(map[packet.Key]*flow.Entry, len(entries)), res: res,
		armCh: make(chan struct{}, 1), woke: make(chan struct{}, 1),
		last: ch.Counters(),
	}
	for _, e := range entries {
		p.flows[e.Key()] = e
		if adv := e.AdvisoryIndex(); adv != flow.NoAdvisory {
			if int(adv) >= ch.Advisories() {
				n.sw.RemovePort(id)
				return nil, fmt.Errorf("flow %v: advisory %d outside the channel's %d", e.Key(), adv, ch.Advisories())
			}
			// Cleared at Thaw, not now: clearing posts an event on the
			// app's event ring, which is the old nexus's until the
			// commit (a takeover that fails leaves it serving).
			n.advClear = append(n.advClear, advClear{p, adv})
		}
	}
	n.adoptSteering(p)
	n.ports[id] = p
	n.order = append(n.order, p)
	n.waiters.Add(1)
	go p.waiter()
	return ap, nil
}

// Restore carries a frozen nexus's counters on (the switch's own, the
// count of ports opened, for channel names) in this one, which took it
// over; call it before Thaw.
func (n *Nexus) Restore(h Handover) error {
	return n.do(func() error {
		if !n.frozen {
			return errors.New("nexus: restore: not frozen")
		}
		n.seq = max(n.seq, h.Seq)
		n.sw.RestoreStats(h.Switch)
		return nil
	})
}
