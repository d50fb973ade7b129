package afxdp

import (
	"errors"
	"fmt"
	"net"
	"time"

	"golang.org/x/sys/unix"

	"github.com/skylane/skylane/internal/shm"
	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/netif/steer"
	"github.com/skylane/skylane/packet"
	"github.com/skylane/skylane/pool"
)

// umemSegmentSize is the pool segment size of the UMEM: the pool's default
// (docs/design.md §2), a whole number of 2 and 4 KiB frames.
const umemSegmentSize = pool.DefaultSegmentSize

// Open binds an AF_XDP socket to opts.Interface and opts.Queue, attaches
// the steering XDP program and returns the link. It needs root (CAP_BPF,
// CAP_NET_ADMIN, CAP_NET_RAW) and acts in the calling thread's network
// namespace. On any error everything made so far is released.
func Open(opts Options) (Link, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	ifc, err := net.InterfaceByName(o.Interface)
	if err != nil {
		return nil, fmt.Errorf("afxdp: no interface %q in this network namespace: %w", o.Interface, err)
	}
	maxFrame := netif.MaxFrameLen(ifc.MTU, packet.Ethernet)
	if need := maxFrame + xdpPacketHeadroom; need > o.FrameSize {
		hint := "use FrameSize 4096"
		if need > 4096 {
			// Without multi-buffer (XDP_USE_SG) a frame is one UMEM
			// frame, at most a page.
			hint = fmt.Sprintf("lower the MTU to %d or less (AF_XDP frames are at most a 4096-byte page here)", 4096-xdpPacketHeadroom-netif.EthernetHeaderLen)
		}
		return nil, fmt.Errorf("afxdp: %s: MTU %d needs %d-byte UMEM frames (frame %d + headroom %d), FrameSize is %d: %s",
			o.Interface, ifc.MTU, need, maxFrame, xdpPacketHeadroom, o.FrameSize, hint)
	}
	l := &xlink{name: o.Interface, ifindex: ifc.Index, queue: o.Queue, mtu: ifc.MTU, maxFrame: maxFrame, maxSuper: maxFrame, fd: -1}
	defer func() {
		if err != nil {
			l.release()
		}
	}()
	if err = l.setup(&o); err != nil {
		return nil, fmt.Errorf("afxdp: open %s queue %d: %w", o.Interface, o.Queue, err)
	}
	return l, nil
}

func (o Options) withDefaults() (Options, error) {
	if o.Mode == 0 {
		o.Mode = steer.XDPGeneric
	}
	if o.FrameSize == 0 {
		o.FrameSize = DefaultFrameSize
	}
	if o.RingSize == 0 {
		o.RingSize = DefaultRingSize
	}
	if o.BindTimeout == 0 {
		o.BindTimeout = DefaultBindTimeout
	}
	switch {
	case o.Interface == "":
		return o, errors.New("afxdp: Options.Interface is required")
	case o.Queue < 0 || o.Queue >= steer.MaxQueues:
		return o, fmt.Errorf("afxdp: queue %d outside 0..%d", o.Queue, steer.MaxQueues-1)
	case o.Mode != steer.XDPGeneric && o.Mode != steer.XDPNative:
		return o, fmt.Errorf("afxdp: unknown XDP mode %d", o.Mode)
	case o.FrameSize != 2048 && o.FrameSize != 4096:
		return o, fmt.Errorf("afxdp: FrameSize %d: want 2048 or 4096", o.FrameSize)
	case o.RingSize < MinRingSize || o.RingSize > MaxRingSize || o.RingSize&(o.RingSize-1) != 0:
		return o, fmt.Errorf("afxdp: RingSize %d: want a power of two in %d..%d", o.RingSize, MinRingSize, MaxRingSize)
	case o.Checksums < ChecksumAuto || o.Checksums > ChecksumLeave:
		return o, fmt.Errorf("afxdp: unknown checksum mode %d", o.Checksums)
	case o.BindTimeout < 0:
		return o, fmt.Errorf("afxdp: negative BindTimeout %v", o.BindTimeout)
	case o.RequireZeroCopy && !o.ZeroCopy:
		o.ZeroCopy = true
	}
	return o, nil
}

// setup makes everything, in an order where each step's failure leaves
// only what release undoes.
func (l *xlink) setup(o *Options) (err error) {
	l.lim = rxLimits{maxFrame: l.maxFrame, maxDescs: 1, keep: l.keep}
	if l.wake, err = shm.NewEventFD(); err != nil {
		return err
	}
	// UMEM: a fixed pool, all of it held by the link. The pool lays it out
	// in segments; the per-segment address lookup happens once per
	// segment here, and the rings carry addresses from then on.
	frames := 2 * o.RingSize
	segs := frames * o.FrameSize / umemSegmentSize
	if l.pool, err = pool.New(pool.Options{
		Name: "afxdp-" + o.Interface, BufferSize: o.FrameSize, SegmentSize: umemSegmentSize,
		MinSegments: segs, MaxSegments: segs,
	}); err != nil {
		return fmt.Errorf("UMEM: %w", err)
	}
	idx := make([]uint32, frames)
	if got := l.pool.Alloc(idx, pool.Nexus); got != frames {
		return fmt.Errorf("UMEM: pool gave %d of %d frames", got, frames)
	}
	l.umem = l.pool.Mem()[: frames*o.FrameSize : frames*o.FrameSize]
	l.lay = layout{frameSize: uint64(o.FrameSize), rxEnd: uint64(o.RingSize * o.FrameSize), end: uint64(len(l.umem))}
	l.rxFree = make([]uint64, 0, o.RingSize)
	l.txFree = make([]uint64, 0, o.RingSize)
	ac := l.pool.NewAddrCache()
	for _, i := range idx {
		a := ac.Addr(i)
		switch {
		case a >= l.lay.end || a%l.lay.frameSize != 0:
			return fmt.Errorf("UMEM: frame %d at address %d outside the layout", i, a)
		case a < l.lay.rxEnd:
			l.rxFree = append(l.rxFree, a)
		default:
			l.txFree = append(l.txFree, a)
		}
	}

	if l.fd, err = unix.Socket(unix.AF_XDP, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0); err != nil {
		if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
			return fmt.Errorf("AF_XDP socket: %w (needs root, or CAP_NET_RAW, CAP_BPF and CAP_NET_ADMIN)", err)
		}
		if errors.Is(err, unix.EAFNOSUPPORT) {
			return fmt.Errorf("AF_XDP socket: %w (kernel built without CONFIG_XDP_SOCKETS, or too old: Linux 4.18 or later)", err)
		}
		return fmt.Errorf("AF_XDP socket: %w", err)
	}
	if err = registerUMEM(l.fd, l.umem, o.FrameSize); err != nil {
		return err
	}
	n := o.RingSize
	for _, r := range []struct {
		opt  int
		name string
	}{{unix.XDP_UMEM_FILL_RING, "fill"}, {unix.XDP_UMEM_COMPLETION_RING, "completion"}, {unix.XDP_RX_RING, "RX"}, {unix.XDP_TX_RING, "TX"}} {
		if err = unix.SetsockoptInt(l.fd, unix.SOL_XDP, r.opt, n); err != nil {
			return fmt.Errorf("size %s ring (%d): %w", r.name, n, err)
		}
	}
	// One sendto may move a whole ring; where the kernel predates the
	// option (Linux 6.17), it moves 32 descriptors and kick loops.
	_ = unix.SetsockoptInt(l.fd, unix.SOL_XDP, unix.XDP_MAX_TX_SKB_BUDGET, n)
	// In copy mode every frame in flight is an skb charged to the socket's
	// send buffer until the receiver frees it; the default (212 KiB) holds
	// about 256 frames, fewer than the TX ring, and wmem_max caps
	// SO_SNDBUF, so force room for a full ring of the largest frames
	// (the kernel doubles the value for its bookkeeping).
	if err := unix.SetsockoptInt(l.fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, n*o.FrameSize*2); err != nil {
		_ = unix.SetsockoptInt(l.fd, unix.SOL_SOCKET, unix.SO_SNDBUF, n*o.FrameSize*2)
	}
	if err = l.mapRings(uint32(n)); err != nil {
		return err
	}
	// Hand every RX frame to the kernel before traffic can arrive.
	l.refill()

	if o.Flows == nil {
		if o.Flows, err = steer.NewFlows(steer.Options{}); err != nil {
			return err
		}
		l.ownFlows = true
	}
	l.flows = o.Flows
	if l.csumAll, err = completesChecksums(o); err != nil {
		return err
	}
	if l.xdp, err = steer.LoadXDPWith(l.flows, steer.XDPOptions{Frags: !o.SingleBuffer}); err != nil {
		return err
	}
	if err = l.bind(o); err != nil {
		return err
	}
	if err = l.xdp.SetSocket(o.Queue, l.fd); err != nil {
		return err
	}
	return l.xdp.Attach(l.ifindex, o.Mode)
}

func (l *xlink) mapRings(n uint32) error {
	off, err := mmapOffsets(l.fd)
	if err != nil {
		return err
	}
	for _, r := range []struct {
		ring    *ring
		off     unix.XDPRingOffset
		pgoff   int64
		descLen int
		name    string
	}{
		{&l.fill, off.Fr, unix.XDP_UMEM_PGOFF_FILL_RING, addrDescLen, "fill"},
		{&l.comp, off.Cr, unix.XDP_UMEM_PGOFF_COMPLETION_RING, addrDescLen, "completion"},
		{&l.rx, off.Rx, unix.XDP_PGOFF_RX_RING, rxDescLen, "RX"},
		{&l.tx, off.Tx, unix.XDP_PGOFF_TX_RING, rxDescLen, "TX"},
	} {
		size := int(r.off.Desc) + int(n)*r.descLen
		mem, err := unix.Mmap(l.fd, r.pgoff, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
		if err != nil {
			return fmt.Errorf("mmap %s ring: %w", r.name, err)
		}
		if *r.ring, err = newRing(mem, r.off, n, r.descLen); err != nil {
			_ = unix.Munmap(mem)
			return fmt.Errorf("%s ring: %w", r.name, err)
		}
		r.ring.local = 0 // a fresh socket's rings start at 0
	}
	return nil
}

// completesChecksums resolves o.Checksums for the device.
func completesChecksums(o *Options) (bool, error) {
	switch o.Checksums {
	case ChecksumComplete:
		return true, nil
	case ChecksumLeave:
		return false, nil
	}
	drv, err := driverName(o.Interface)
	if err != nil {
		return false, fmt.Errorf("checksum mode auto needs the device's driver (or set Options.Checksums): %w", err)
	}
	return drv == "veth", nil
}

// driverName returns the name of the driver of device ifname (in the
// calling thread's network namespace), as ethtool -i prints it.
func driverName(ifname string) (string, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return "", fmt.Errorf("socket for ethtool: %w", err)
	}
	defer unix.Close(fd)
	info, err := unix.IoctlGetEthtoolDrvinfo(fd, ifname)
	if err != nil {
		return "", fmt.Errorf("ethtool driver info of %s: %w", ifname, err)
	}
	return unix.ByteSliceToString(info.Driver[:]), nil
}

// maxSuperIPLen is the longest IP packet a super packet carries: an IPv4
// total length, or an IPv6 payload length plus its header, fits 16 bits
// without BIG TCP (which veth does not enable unless asked).
const maxSuperIPLen = 65535

// enableSG sets up multi-buffer receive after a bind with XDP_USE_SG: the
// super packet limits and the stage that holds a super packet a short
// buffer cannot.
func (l *xlink) enableSG() {
	l.sg = true
	l.maxSuper = maxSuperIPLen + netif.EthernetHeaderLen
	// In copy mode every descriptor holds a UMEM frame less the kernel's
	// headroom; one more for a frame that starts mid-chunk.
	per := int(l.lay.frameSize) - xdpPacketHeadroom
	l.lim.maxDescs = (l.maxSuper+per-1)/per + 1
	l.lim.stage = make([]byte, l.maxSuper)
}

// bind binds the socket, retrying EBUSY with backoff until BindTimeout.
func (l *xlink) bind(o *Options) error {
	sg := uint16(unix.XDP_USE_SG)
	if o.SingleBuffer {
		sg = 0
	}
	flags := unix.XDP_USE_NEED_WAKEUP | unix.XDP_COPY | sg
	if o.ZeroCopy {
		flags = unix.XDP_USE_NEED_WAKEUP | unix.XDP_ZEROCOPY | sg
	}
	deadline := time.Now().Add(o.BindTimeout)
	backoff := 10 * time.Millisecond
	for tries := 1; ; tries++ {
		err := unix.Bind(l.fd, &unix.SockaddrXDP{Flags: flags, Ifindex: uint32(l.ifindex), QueueID: uint32(o.Queue)})
		switch {
		case err == nil:
			l.zc = flags&unix.XDP_ZEROCOPY != 0
			if flags&unix.XDP_USE_SG != 0 {
				l.enableSG()
			}
			return nil
		case errors.Is(err, unix.EBUSY):
			l.bindRetries++
			if time.Now().Add(backoff).After(deadline) {
				return fmt.Errorf("bind: queue still busy after %d tries in %v (another AF_XDP socket holds it, or one closed moments ago: retry later): %w: %w",
					tries, o.BindTimeout, ErrBusy, err)
			}
			time.Sleep(backoff) // the kernel gives no event to wait for
			backoff = min(2*backoff, 250*time.Millisecond)
		case flags&unix.XDP_ZEROCOPY != 0:
			zerr := fmt.Errorf("%w on %s (the driver lacks AF_XDP zero-copy support; veth never has it): %w", ErrZeroCopy, l.name, err)
			if o.RequireZeroCopy {
				return zerr
			}
			l.zcErr = zerr
			flags = unix.XDP_USE_NEED_WAKEUP | unix.XDP_COPY | sg
		case errors.Is(err, unix.EINVAL) && o.Queue > 0:
			return fmt.Errorf("bind: %w (the device has no queue %d)", err, o.Queue)
		default:
			return fmt.Errorf("bind: %w", err)
		}
	}
}

// release undoes setup, whatever part of it was done. Called by Close
// (with every lock held) or by a failing Open.
func (l *xlink) release() error {
	var errs []error
	// The program first: the device stops redirecting into the socket.
	// l.xdp stays set: its Close is idempotent, and Counters after Close
	// must find it (and get steer.ErrClosed).
	if l.xdp != nil {
		errs = append(errs, l.xdp.Close())
	}
	if l.ownFlows && l.flows != nil {
		errs = append(errs, l.flows.Close())
	}
	for _, r := range []*ring{&l.rx, &l.tx, &l.fill, &l.comp} {
		if r.mem != nil {
			if err := unix.Munmap(r.mem); err != nil {
				errs = append(errs, fmt.Errorf("unmap ring: %w", err))
			}
			*r = ring{}
		}
	}
	if l.fd >= 0 {
		if k, err := kernelStats(l.fd); err == nil {
			l.lastKernel = k
		}
		if err := unix.Close(l.fd); err != nil {
			errs = append(errs, fmt.Errorf("close AF_XDP socket: %w", err))
		}
		l.fd = -1
	}
	// The socket's UMEM pins its pages until the kernel releases it;
	// unmapping our view first is safe.
	l.umem = nil
	if l.pool != nil {
		errs = append(errs, l.pool.Close())
		l.pool = nil
	}
	if l.wake != nil {
		errs = append(errs, l.wake.Close())
	}
	return errors.Join(errs...)
}
