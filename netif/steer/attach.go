package steer

import (
	"errors"
	"fmt"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// XDPMode is where the XDP program runs.
type XDPMode int

const (
	// XDPGeneric runs the program on the skb, after the driver (SKB mode):
	// every device supports it.
	XDPGeneric XDPMode = iota + 1
	// XDPNative runs it in the driver, before an skb exists (DRV mode):
	// faster, where the driver supports it (veth does).
	XDPNative
)

func (m XDPMode) String() string {
	switch m {
	case XDPGeneric:
		return "generic"
	case XDPNative:
		return "native"
	}
	return fmt.Sprintf("XDPMode(%d)", int(m))
}

// MaxQueues is the XSKMAP's size: the most receive queues whose frames
// the XDP program can redirect. Queues at or above it pass to the kernel.
const MaxQueues = 64

// XDP is the steering XDP program, loaded over a Flows map and its own
// XSKMAP. Attach it to a device, then put each AF_XDP socket in the map
// with SetSocket.
type XDP struct {
	prog     *ebpf.Program
	xsks     *ebpf.Map
	counters *ebpf.Map
	frags    *ebpf.Map // datagrams of claimed flows in fragments (prog.go)

	mu   sync.Mutex
	link link.Link // guarded by mu; nil until attached, and after Close
}

// XDPOptions configure LoadXDPWith.
type XDPOptions struct {
	// Frags loads the program frags-aware (BPF_F_XDP_HAS_FRAGS, the
	// "xdp.frags" section of C programs): the kernel may then hand it a
	// multi-buffer frame, e.g. a whole 64 KiB TSO/GRO super packet in
	// generic mode, instead of linearizing the skb (generic) or refusing
	// MTUs above a page (native). The program reads only the headers, which
	// the first buffer always holds; an AF_XDP socket bound with
	// XDP_USE_SG receives such a frame as a chain of descriptors, one
	// without XDP_USE_SG drops it.
	Frags bool
}

// LoadXDP loads the XDP program over flows, without attaching it: single
// buffer (LoadXDPWith with the zero XDPOptions).
func LoadXDP(flows *Flows) (*XDP, error) { return LoadXDPWith(flows, XDPOptions{}) }

// LoadXDPWith loads the XDP program over flows with opts, without
// attaching it.
func LoadXDPWith(flows *Flows, opts XDPOptions) (_ *XDP, err error) {
	x := &XDP{}
	defer func() {
		if err != nil {
			x.Close()
		}
	}()
	if x.xsks, err = ebpf.NewMap(&ebpf.MapSpec{
		Name:       "skylane_xsks",
		Type:       ebpf.XSKMap,
		KeySize:    4,
		ValueSize:  4,
		MaxEntries: MaxQueues,
	}); err != nil {
		return nil, fmt.Errorf("steer: create XSKMAP: %w%s", err, privHint(err))
	}
	if x.counters, err = newCounters("skylane_xdp_ctr"); err != nil {
		return nil, err
	}
	if x.frags, err = newFragMap("skylane_xdp_frag"); err != nil {
		return nil, err
	}
	var flags uint32
	if opts.Frags {
		flags = unix.BPF_F_XDP_HAS_FRAGS
	}
	err = flows.withMap(func(m *ebpf.Map) error {
		x.prog, err = loadProgram(&ebpf.ProgramSpec{
			Name:         "skylane_xdp",
			Type:         ebpf.XDP,
			Instructions: instructions(kindXDP, m, x.frags, x.counters, x.xsks),
			License:      "Dual MIT/GPL",
			Flags:        flags,
		})
		return err
	})
	if err != nil {
		return nil, err
	}
	return x, nil
}

func loadProgram(spec *ebpf.ProgramSpec) (*ebpf.Program, error) {
	p, err := ebpf.NewProgram(spec)
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			// The full log names the failing instruction.
			return nil, fmt.Errorf("steer: load %s program: %w\n%+v", spec.Name, err, ve)
		}
		return nil, fmt.Errorf("steer: load %s program: %w%s", spec.Name, err, privHint(err))
	}
	return p, nil
}

// Attach attaches the program to device ifindex (in the calling thread's
// network namespace) through a BPF link, so it is detached when x is closed
// or the process dies. It fails if another XDP program is attached.
func (x *XDP) Attach(ifindex int, mode XDPMode) error {
	var flags link.XDPAttachFlags
	switch mode {
	case XDPGeneric:
		flags = link.XDPGenericMode
	case XDPNative:
		flags = link.XDPDriverMode
	default:
		return fmt.Errorf("steer: attach XDP: unknown mode %d", mode)
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.prog == nil {
		return ErrClosed
	}
	if x.link != nil {
		return errors.New("steer: attach XDP: already attached")
	}
	l, err := link.AttachXDP(link.XDPOptions{Program: x.prog, Interface: ifindex, Flags: flags})
	if err != nil {
		return fmt.Errorf("steer: attach XDP program in %s mode to ifindex %d: %w%s", mode, ifindex, err, attachHint(err, "XDP"))
	}
	x.link = l
	return nil
}

// SetSocket makes the program redirect the steered frames that arrive on
// queue to the AF_XDP socket fd.
func (x *XDP) SetSocket(queue, fd int) error {
	if queue < 0 || queue >= MaxQueues {
		return fmt.Errorf("steer: queue %d outside 0..%d", queue, MaxQueues-1)
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.xsks == nil {
		return ErrClosed
	}
	if err := x.xsks.Put(uint32(queue), uint32(fd)); err != nil {
		return fmt.Errorf("steer: put AF_XDP socket in XSKMAP for queue %d: %w", queue, err)
	}
	return nil
}

// Counters returns the program's counters.
func (x *XDP) Counters() (Counters, error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.counters == nil {
		return Counters{}, ErrClosed
	}
	return readCounters(x.counters)
}

// Program returns the loaded program (for BPF_PROG_TEST_RUN in tests).
// It stays owned by x.
func (x *XDP) Program() *ebpf.Program { return x.prog }

// Close detaches the program and releases it and its maps. Idempotent.
func (x *XDP) Close() error {
	x.mu.Lock()
	defer x.mu.Unlock()
	var errs []error
	// The link first, so the device stops running the program before its
	// maps go.
	if x.link != nil {
		if err := x.link.Close(); err != nil {
			errs = append(errs, fmt.Errorf("steer: detach XDP: %w", err))
		}
		x.link = nil
	}
	if x.prog != nil {
		errs = append(errs, x.prog.Close())
	}
	for _, m := range []*ebpf.Map{x.xsks, x.counters, x.frags} {
		if m != nil {
			errs = append(errs, m.Close())
		}
	}
	x.prog, x.xsks, x.counters, x.frags = nil, nil, nil, nil
	return errors.Join(errs...)
}

// TC is the steering TC ingress program: it drops the frames of registered
// flows so the kernel stack does not answer them, after AF_PACKET sockets
// have seen them.
type TC struct {
	prog     *ebpf.Program
	counters *ebpf.Map
	frags    *ebpf.Map // datagrams of claimed flows in fragments (prog.go)

	mu   sync.Mutex
	link link.Link // guarded by mu
}

// LoadTC loads the TC program over flows, without attaching it.
func LoadTC(flows *Flows) (_ *TC, err error) {
	t := &TC{}
	defer func() {
		if err != nil {
			t.Close()
		}
	}()
	if t.counters, err = newCounters("skylane_tc_ctr"); err != nil {
		return nil, err
	}
	if t.frags, err = newFragMap("skylane_tc_frag"); err != nil {
		return nil, err
	}
	err = flows.withMap(func(m *ebpf.Map) error {
		t.prog, err = loadProgram(&ebpf.ProgramSpec{
			Name:         "skylane_tc",
			Type:         ebpf.SchedCLS,
			AttachType:   ebpf.AttachTCXIngress,
			Instructions: instructions(kindTC, m, t.frags, t.counters, nil),
			License:      "Dual MIT/GPL",
		})
		return err
	})
	if err != nil {
		return nil, err
	}
	return t, nil
}

// AttachTC loads the TC program over flows and attaches it to the ingress
// of device ifindex (in the calling thread's network namespace) with TCX,
// a BPF link: closing the TC, or the process dying, detaches it. TCX needs
// Linux 6.6 or later; there is no netlink (cls_bpf) fallback, because a
// filter attached that way outlives a crashed process and would keep
// dropping the flows' frames.
func AttachTC(flows *Flows, ifindex int) (*TC, error) {
	t, err := LoadTC(flows)
	if err != nil {
		return nil, err
	}
	l, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: t.prog, Attach: ebpf.AttachTCXIngress})
	if err != nil {
		t.Close()
		return nil, fmt.Errorf("steer: attach TC ingress program to ifindex %d: %w%s", ifindex, err, attachHint(err, "TCX"))
	}
	t.link = l
	return t, nil
}

// Counters returns the program's counters.
func (t *TC) Counters() (Counters, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.counters == nil {
		return Counters{}, ErrClosed
	}
	return readCounters(t.counters)
}

// Program returns the loaded program (for tests). It stays owned by t.
func (t *TC) Program() *ebpf.Program { return t.prog }

// Close detaches and releases the program. Idempotent.
func (t *TC) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	var errs []error
	if t.link != nil {
		if err := t.link.Close(); err != nil {
			errs = append(errs, fmt.Errorf("steer: detach TC: %w", err))
		}
		t.link = nil
	}
	if t.prog != nil {
		errs = append(errs, t.prog.Close())
		t.prog = nil
	}
	for _, m := range []*ebpf.Map{t.counters, t.frags} {
		if m != nil {
			errs = append(errs, m.Close())
		}
	}
	t.counters, t.frags = nil, nil
	return errors.Join(errs...)
}
