package tun

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/netif/internal/vnet"
)

// Write implements netif.Link.Write: frames up to the MTU go out as they
// are, TCP frames up to MaxSuperPacketLen as super packets whose segments
// are MTU bytes long. Any other frame over the MTU stops the batch with
// netif.ErrFrameTooLarge.
func (l *Link) Write(frames [][]byte) (int, error) {
	return l.WriteGSO(frames, nil)
}

// WriteGSO implements netif.SuperPacketLink.WriteGSO: Write with a segment
// size per frame. A frame longer than the MTU is a super packet the kernel
// splits into segSizes[i]-byte payloads (the TCP MSS, or for UDP the
// datagram payload size; UDP needs USO, see Offloads). segSizes[i] == 0,
// or segSizes shorter than frames, derives the size from the MTU as Write
// does (TCP only). Frames up to the MTU ignore segSizes.
func (l *Link) WriteGSO(frames [][]byte, segSizes []int) (int, error) {
	if l.closed.Load() {
		return 0, netif.ErrClosed
	}
	w := &l.txw
	c := &l.stats
	w.frames, w.segSizes, w.i, w.sent, w.bytes, w.err = frames, segSizes, 0, 0, 0, nil
	err := l.rc.Write(l.writeFn)
	i, werr := w.i, w.err
	c.txPackets.Add(w.sent)
	c.txBytes.Add(w.bytes)
	w.frames, w.segSizes = nil, nil // keep no reference to the caller's memory
	if err != nil {
		return i, l.closedErr(err)
	}
	return i, werr
}

// writeBatch is WriteGSO's RawWrite callback (bound once in New). It always
// returns true: Write never waits.
func (l *Link) writeBatch(fd uintptr) bool {
	w := &l.txw
	c := &l.stats
	frames := w.frames
	for w.i < len(frames) { // frames[:w.i] are handled: sent, or refused by the kernel and counted
		f := frames[w.i]
		hdr, payload := w.zero[:], f
		if len(f) > l.mtu {
			seg := 0
			if w.i < len(w.segSizes) {
				seg = w.segSizes[w.i]
			}
			h, err := l.prepareGSO(f, seg)
			if err != nil {
				w.err = fmt.Errorf("tun %s: write frame %d of %d bytes (MTU %d): %w: %w",
					l.name, w.i, len(f), l.mtu, netif.ErrFrameTooLarge, err)
				return true
			}
			hdr, payload = w.vh[:vnet.HdrLen+h], f[h:]
		}
		_, errno := writev(int(fd), hdr, payload, &w.iov)
		switch errno {
		case nil:
			w.sent++
			w.bytes += uint64(len(f))
		case unix.EINTR:
			continue
		case unix.EAGAIN, unix.ENOBUFS:
			// The device is full: tail-drop frames[w.i:].
			c.txDrops.Add(uint64(len(frames) - w.i))
			return true
		default:
			// The kernel refused this frame (EINVAL: malformed; EIO:
			// device down). It is dropped, counted, and the batch goes
			// on: one bad frame must not stall the ones behind it.
			c.txDrops.Add(1)
		}
		w.i++
	}
	return true
}

// prepareGSO fills the writer's header buffer for the super packet f and
// returns the length of f's headers (the payload follows them).
func (l *Link) prepareGSO(f []byte, seg int) (int, error) {
	if len(f) > l.maxSuper {
		return 0, errors.New("longer than MaxSuperPacketLen")
	}
	if seg == 0 {
		proto, _, _, _, err := vnet.L4(f, 0)
		if err != nil {
			return 0, err
		}
		if proto != unix.IPPROTO_TCP {
			// Splitting a UDP super packet at the MTU would change the
			// datagrams the receiver sees: only the caller knows them.
			return 0, errors.New("UDP super packet needs a segment size (WriteGSO)")
		}
		seg = vnet.DefaultMSS(f, 0, l.mtu)
	}
	var h vnet.Hdr
	w := &l.txw
	n, err := vnet.PrepareGSO(f, 0, seg, l.offloads&unix.TUN_F_USO4 != 0, &h, w.vh[vnet.HdrLen:])
	if err != nil {
		return 0, err
	}
	h.Encode(w.vh[:vnet.HdrLen])
	return n, nil
}
