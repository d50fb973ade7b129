package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/skylane/skylane/flowswitch"
	"github.com/skylane/skylane/neigh"
	"github.com/skylane/skylane/neigh/kernel"
	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/netif/drivers"
	"github.com/skylane/skylane/nexus"
	"github.com/skylane/skylane/packet"
)

// linkConfig is the device a nexus owns, as the commands' flags give it.
type linkConfig struct {
	dev, driver, mode string
	host              netip.Addr // the apps' address: one of dev's (afxdp, afpacket), the stack's (tun, memif), or invalid for all of dev's
	peerMAC           string
	tunAddr           string
	regulation        bool          // the switch's Regulation: needed for per-app rates
	busyPoll          time.Duration // the nexus's spin budget before it sleeps (nexus.Options.BusyPoll)
	// maxFlows and maxPortFlows are the flow table's limits
	// (flowswitch.Options.MaxFlows, MaxPortFlows); 0: its defaults.
	maxFlows, maxPortFlows int
	// checkPorts, if set, looks at the kernel's sockets before the link
	// is opened (afxdp, afpacket).
	checkPorts func(*drivers.KernelPorts) error
	// takeover, if set, takes the device and the nexus over from a
	// running nexus instead of opening the driver: it gets the nexus's
	// options without a link (nexus_takeover.go).
	takeover func(nexus.Options) (*nexus.Nexus, netif.Link, error)
	// log gets the next-hop follower's warnings; nil writes them as text
	// lines to openNexus's notes.
	log *slog.Logger
}

// ownedNexus is a nexus on a device, with what it needs: the parts
// close closes, in order.
type ownedNexus struct {
	link  netif.Link // until the nexus owns it
	dev   netif.Link // the device, owned by nx (a takeover exports it)
	nx    *nexus.Nexus
	kp    *drivers.KernelPorts // nil for tun and memif: no kernel shares the device
	res   *drivers.Reserver    // the apps' listener ports in the kernel; nil as kp
	nh    *kernel.Follower     // next hops from the kernel's tables; nil for tun, memif and --peer-mac
	addrs []netip.Addr
	name  string // the device's name (a TUN device's is the kernel's choice)
	index int    // the device's interface index, 0 for memif
}

// openNexus opens the driver and a nexus on it, in the calling thread's
// network namespace. notes gets advice that is not an error.
func openNexus(c linkConfig, notes io.Writer) (_ *ownedNexus, err error) {
	spec := drivers.Spec{Driver: c.driver, Dev: c.dev, Mode: c.mode}
	if err := drivers.CheckPrivileges(spec); err != nil {
		return nil, err
	}
	o := &ownedNexus{}
	if c.log == nil {
		c.log = slog.New(slog.NewTextHandler(notes, nil))
	}
	defer func() {
		if err != nil {
			o.close() // what was made so far
		}
	}()
	swo := flowswitch.Options{MaxFlows: c.maxFlows, MaxPortFlows: c.maxPortFlows}
	var eph [2]uint16 // apps' ephemeral ports: their stack's default without a kernel
	if c.regulation {
		swo.Regulation = &flowswitch.RegulationOptions{}
	}
	cfg := serveConfig{host: c.host, tunAddr: c.tunAddr}
	switch c.driver {
	case drivers.TUN, drivers.Memif:
		if !c.host.IsValid() {
			return nil, fmt.Errorf("--driver %s needs the apps' address (--addr IP): nothing else gives the device one", c.driver)
		}
		o.addrs = []netip.Addr{c.host}
		if c.driver == drivers.TUN {
			kernel, err := tunKernelAddr(cfg)
			if err != nil {
				return nil, err
			}
			spec.Addrs = []netip.Prefix{kernel}
			// The apps' address is the nexus's alone: it answers pings
			// and closed ports as a host would.
			swo.AnswerAsHost = true
		}
	default:
		ifc, err := net.InterfaceByName(c.dev)
		if err != nil {
			return nil, fmt.Errorf("interface %q: %w in this network namespace (%w): list them with `ip link`; for another namespace, run under `ip netns exec NS`",
				c.dev, drivers.ErrNoInterface, err)
		}
		o.index = ifc.Index
		if len(ifc.HardwareAddr) != 6 {
			return nil, fmt.Errorf("%s is not an Ethernet interface (%w for %s): use --driver tun for raw-IP devices", c.dev, drivers.ErrUnsupported, c.driver)
		}
		swo.SrcMAC = [6]byte(ifc.HardwareAddr)
		if c.mode == drivers.ModeTap {
			if err := tapSwitch(c, ifc, &swo); err != nil {
				return nil, err
			}
			o.addrs = []netip.Addr{c.host}
			break // no kernel stack shares the address: no kernel ports, no reservations
		}
		if o.addrs, err = interfaceAddrs(ifc, c.host); err != nil {
			return nil, err
		}
		if c.peerMAC != "" {
			if swo.DstMAC, err = parsePeerMAC(c.peerMAC); err != nil {
				return nil, err
			}
		} else {
			// The kernel shares the interface and its addresses: it
			// answers ARP and NDP for them, so its neighbour table is the
			// one to follow, and its routing table gives the gateways.
			o.nh, err = kernel.Follow(kernel.Options{LinkIndex: ifc.Index,
				Routes: neigh.RoutesOptions{MAC: neigh.MAC(ifc.HardwareAddr)},
				Log:    c.log})
			if err != nil {
				return nil, err
			}
			swo.Neighbors = o.nh.Routes()
		}
		if c.driver == drivers.AFXDP && isVeth(c.dev) {
			fmt.Fprintf(notes, "note: %s is a veth: its peer must send complete checksums and no TSO super packets (ethtool -K PEER tx off), as a wire does; XDP sees frames as the peer wrote them\n", c.dev)
		}
		// The kernel's sockets: the flow table refuses apps their ports.
		if o.kp, err = drivers.NewKernelPorts(o.addrs); err != nil {
			return nil, err
		}
		if c.checkPorts != nil {
			if err := c.checkPorts(o.kp); err != nil {
				return nil, err
			}
		}
		swo.PortTaken = o.kp.Taken
		// One port namespace with the kernel: the apps' listener ports
		// are reserved in it, their dials take ports outside its
		// ephemeral range.
		if o.res, err = drivers.NewReserver(o.index); err != nil {
			return nil, err
		}
		var ok bool
		if eph, ok = drivers.AppEphemeral(); !ok {
			fmt.Fprintf(notes, "note: the kernel's ephemeral port range %d-%d leaves apps no range of their own: their outgoing connections share it, and may collide with the kernel's\n", eph[0], eph[1])
		}
	}
	no := nexus.Options{Addrs: o.addrs, Switch: swo, Ephemeral: eph, BusyPoll: c.busyPoll}
	if o.res != nil {
		no.Reserve = func(k packet.Key) (nexus.Reservation, error) {
			r, err := o.res.Reserve(k)
			if err != nil {
				return nil, err // not a typed nil
			}
			return r, nil
		}
		no.AdoptReservation = func(k packet.Key, fd int) (nexus.Reservation, error) {
			r, err := drivers.AdoptReservation(k, fd)
			if err != nil {
				return nil, err
			}
			return r, nil
		}
	}
	if c.takeover != nil {
		if o.nx, o.dev, err = c.takeover(no); err != nil {
			return nil, err
		}
		o.name = o.dev.Name()
		return o, nil
	}
	if o.link, err = drivers.Open(spec); err != nil {
		return nil, err
	}
	o.name = o.link.Name()
	if c.driver == drivers.TUN {
		if ifc, err := net.InterfaceByName(o.name); err == nil {
			o.index = ifc.Index
		}
	}
	no.Link = o.link
	nx, err := nexus.New(no)
	if err != nil {
		return nil, err
	}
	o.nx, o.dev, o.link = nx, o.link, nil // the nexus owns the link now
	return o, nil
}

// tapSwitch configures the switch of an AF_PACKET tap (--mode tap): with no
// steering program, the kernel's stack sees every frame, so it must own no
// address on the interface (it would reset every connection to the apps);
// the apps' address (--addr) is the nexus's alone, which then answers ARP
// and NDP for it, resolves its neighbours (unless --peer-mac) and answers
// pings and closed ports as a host.
func tapSwitch(c linkConfig, ifc *net.Interface, swo *flowswitch.Options) error {
	if !c.host.IsValid() {
		return fmt.Errorf("--mode tap needs the apps' address (--addr IP): the interface must have no kernel address, and the nexus answers for this one")
	}
	kernel, err := interfaceAddrs(ifc, netip.Addr{})
	if err == nil && len(kernel) > 0 {
		return fmt.Errorf("--mode tap on %s, where the kernel has %v: its stack sees every frame of a tap and would reset the apps' connections; remove them (ip addr flush dev %s scope global) or use --mode steer",
			c.dev, kernel, c.dev)
	}
	if c.peerMAC != "" {
		var err error
		if swo.DstMAC, err = parsePeerMAC(c.peerMAC); err != nil {
			return err
		}
	}
	swo.AnswerAsHost = true
	return nil
}

// close closes the nexus (and with it the link: the XDP or TC program is
// detached, a TUN device removed) and the kernel ports' files.
func (o *ownedNexus) close() error {
	var errs []error
	if o.nx != nil {
		errs = append(errs, o.nx.Close())
	}
	if o.link != nil {
		errs = append(errs, o.link.Close())
	}
	if o.kp != nil {
		errs = append(errs, o.kp.Close())
	}
	if o.res != nil {
		errs = append(errs, o.res.Close()) // the nexus closed its reservations
	}
	if o.nh != nil {
		errs = append(errs, o.nh.Close()) // after the nexus: its switch asks it
	}
	return errors.Join(errs...)
}
