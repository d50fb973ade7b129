package afpacket

import (
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/netif/internal/vnet"
)

// maxGSOHdrs is the most header bytes of a super packet that are copied and
// patched before it is sent: an Ethernet header with one VLAN tag, a 60-byte
// IPv4 header (IPv6's is 40) and a 60-byte TCP header.
const maxGSOHdrs = netif.EthernetHeaderLen + 60 + 60

// Ethernet types a super packet may carry.
const (
	etherIPv4 = 0x0800
	etherIPv6 = 0x86dd
	etherVLAN = 0x8100
)

// gsoSndBuf is the send buffer of the socket that sends super packets in
// TxRing mode: room for a batch of DefaultBatchSize 64 KiB super packets in
// flight, with the kernel's per-skb overhead to spare, so such a batch is
// not tail-dropped on a device that frees them late.
const gsoSndBuf = 4 << 20

// openGSOSocket opens the send-only packet socket that carries super
// packets in TxRing mode. Bound with protocol 0 it receives nothing, so it
// needs no ring and never wakes; it is nonblocking and sent on with
// MSG_DONTWAIT only, so it stays out of Go's poller.
func (l *Link) openGSOSocket(o *Options) error {
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("afpacket %s: super packet socket: %w", l.name, err)
	}
	l.gsoFd = fd // release closes it from here on
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_VNET_HDR, 1); err != nil {
		return fmt.Errorf("afpacket %s: super packet socket: PACKET_VNET_HDR: %w", l.name, err)
	}
	if o.QdiscBypass {
		if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_QDISC_BYPASS, 1); err != nil {
			return fmt.Errorf("afpacket %s: super packet socket: PACKET_QDISC_BYPASS: %w", l.name, err)
		}
	}
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, gsoSndBuf) != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, gsoSndBuf)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Ifindex: l.ifindex}); err != nil {
		return fmt.Errorf("afpacket %s: bind super packet socket: %w", l.name, err)
	}
	return nil
}

// gsoL3 returns the offset of the IP header of the Ethernet frame f, and
// checks that the IP version matches the Ethernet type: the kernel picks the
// protocol from the Ethernet type, the segmentation from the IP header.
func gsoL3(f []byte) (int, error) {
	if len(f) < 14 {
		return 0, errors.New("shorter than an Ethernet header")
	}
	l3, et := 14, binary.BigEndian.Uint16(f[12:])
	if et == etherVLAN {
		if len(f) < 18 {
			return 0, errors.New("shorter than a VLAN-tagged Ethernet header")
		}
		l3, et = 18, binary.BigEndian.Uint16(f[16:])
	}
	if len(f) <= l3 {
		return 0, errors.New("no IP header")
	}
	switch {
	case et == etherIPv4 && f[l3]>>4 == 4, et == etherIPv6 && f[l3]>>4 == 6:
		return l3, nil
	}
	return 0, fmt.Errorf("Ethernet type %#04x with IP version %d: not IPv4 or IPv6", et, f[l3]>>4)
}

// prepareGSO fills the writer's header buffer for the super packet f with
// segment payload seg (0: TCP segments of MTU bytes) and returns the
// length of f's headers: the payload follows them in f.
func (l *Link) prepareGSO(f []byte, seg int) (int, error) {
	if len(f) > l.maxSuper {
		return 0, errors.New("longer than MaxSuperPacketLen")
	}
	l3, err := gsoL3(f)
	if err != nil {
		return 0, err
	}
	if seg == 0 {
		proto, _, _, _, err := vnet.L4(f, l3)
		if err != nil {
			return 0, err
		}
		if proto != unix.IPPROTO_TCP {
			// Cutting a UDP super packet at the MTU would change the
			// datagrams the receiver sees: only the caller knows them.
			return 0, errors.New("UDP super packet needs a segment size (WriteGSO)")
		}
		if seg = vnet.DefaultMSS(f, l3, l.mtu); seg == 0 {
			return 0, fmt.Errorf("headers leave no payload in an MTU of %d", l.mtu)
		}
	}
	w := &l.txw
	var h vnet.Hdr
	// USO is always asked for: every kernel with UDP GSO on packet
	// sockets (6.2) segments it in software where the device cannot, and
	// an older one refuses the frame (EINVAL), which writeSuper reports.
	n, err := vnet.PrepareGSO(f, l3, seg, true, &h, w.vh[vnet.HdrLen:])
	if err != nil {
		return 0, err
	}
	h.Encode(w.vh[:vnet.HdrLen])
	return n, nil
}

// writeSuper sends the super packet f, whose first h bytes prepareGSO
// patched into the writer's header buffer. It reports whether the kernel
// took it; false with a nil error means the device is full.
func (l *Link) writeSuper(f []byte, h int) (bool, error) {
	w := &l.txw
	c := &l.stats
	w.gsoHdr, w.payload, w.errno = w.vh[:vnet.HdrLen+h], f[h:], 0
	err := l.rc.Write(l.gsoFn)
	errno := w.errno
	w.gsoHdr, w.payload = nil, nil // keep no reference to the caller's memory
	if err != nil {
		return false, l.closedErr(err)
	}
	switch errno {
	case 0:
		c.txPackets.Add(1)
		c.txBytes.Add(uint64(len(f)))
		return true, nil
	case unix.EAGAIN, unix.ENOBUFS:
		return false, nil
	case unix.EINVAL:
		return false, fmt.Errorf("afpacket %s: send super packet of %d bytes: %w (the kernel refused its virtio header: UDP super packets need Linux 6.2)",
			l.name, len(f), errno)
	}
	return false, fmt.Errorf("afpacket %s: send super packet of %d bytes: %w", l.name, len(f), errno)
}

// sendSuper is writeSuper's RawWrite callback (bound once in New). In
// TxRing mode it sends on the super packet socket, which Close closes only
// with the Link's lock held exclusively, so it is open here; otherwise on
// the Link's socket, which fd is.
func (l *Link) sendSuper(fd uintptr) bool {
	w := &l.txw
	s := int(fd)
	if l.gsoFd >= 0 {
		s = l.gsoFd
	}
	for {
		w.errno = sendmsg2(s, &w.gsoMsg, &w.gsoIov, w.gsoHdr, w.payload)
		if w.errno != unix.EINTR {
			return true
		}
	}
}
