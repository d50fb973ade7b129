package afpacket

import (
	"encoding/binary"
	"errors"
	"io"
	"os"
	"time"

	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/netif/internal/vnet"
)

// minMac is the least tp_mac of a received frame: its header, then the
// virtio header right before the link header.
const minMac = frameHdrLen + vnet.HdrLen

// Read implements netif.Link.Read. Each bufs[i] must hold MaxFrameLen bytes;
// one of MaxSuperPacketLen bytes receives a TCP super packet whole
// (netif.SuperPacketLink). A frame the
// kernel truncated (larger than the ring's blocks) is dropped and counted.
func (l *Link) Read(bufs [][]byte, sizes []int) (int, error) {
	if !l.lock() {
		return 0, netif.ErrClosed
	}
	defer l.mu.RUnlock()
	limit := min(len(bufs), len(sizes))
	r := &l.rxr
	c := &l.stats
	n := 0
	var bytes uint64
	var err error
	for n < limit {
		if r.split.Left() > 0 {
			k, m, serr := l.emitSegments(bufs[n:limit], sizes[n:limit])
			n += k
			bytes += m
			if serr != nil {
				err = serr
				break
			}
			continue
		}
		if !r.active {
			blk := l.rx[r.blk]
			if loadStatus(blk, blkStatusOff)&statusUser == 0 {
				break // the kernel still fills it: nothing more to read
			}
			if r.iter.reset(blk, minMac) != nil {
				c.rxDrops.Add(1) // a block we cannot walk: its frames are lost
				l.releaseBlock()
				continue
			}
			r.active = true
		}
		var f frameDesc
		ok, ierr := r.iter.next(&f)
		if ierr != nil {
			c.rxDrops.Add(1)
		}
		if !ok {
			l.releaseBlock()
			continue
		}
		k, m, derr := l.deliver(l.rx[r.blk], &f, bufs[n:limit], sizes[n:limit])
		n += k
		bytes += m
		if ierr != nil {
			l.releaseBlock()
		}
		if derr != nil {
			err = derr
			break
		}
	}
	c.rxPackets.Add(uint64(n))
	c.rxBytes.Add(bytes)
	return n, err
}

// releaseBlock gives the current block back to the kernel and moves on.
func (l *Link) releaseBlock() {
	r := &l.rxr
	storeStatus(l.rx[r.blk], blkStatusOff, statusKernel)
	r.active = false
	r.blk++
	if r.blk == len(l.rx) {
		r.blk = 0
	}
}

// deliver copies frame f of block blk into bufs[0] (putting back a VLAN tag
// the kernel took off), completing a partial checksum, or starts splitting
// it when it is a super packet bufs[0] cannot hold, or a UDP one. It returns the frames
// and bytes delivered.
func (l *Link) deliver(blk []byte, f *frameDesc, bufs [][]byte, sizes []int) (int, uint64, error) {
	r := &l.rxr
	c := &l.stats
	if f.snap < f.wire || f.snap < 14 {
		c.rxDrops.Add(1) // truncated by the ring: a partial frame is no frame
		return 0, 0, nil
	}
	if r.hdr.Decode(blk[f.data-vnet.HdrLen:f.data]) != nil {
		c.rxDrops.Add(1)
		return 0, 0, nil
	}
	tag := 0
	if f.status&statusVLAN != 0 {
		tag = 4
	}
	size := f.snap + tag
	dst := bufs[0]
	// A UDP super packet is split even into a buffer that holds it:
	// delivered whole it would be one datagram nobody sent.
	split := r.hdr.IsGSO() && (size > len(dst) || r.hdr.IsUSO())
	if split {
		dst = r.buf
	}
	if size > len(dst) {
		c.rxDrops.Add(1)
		return 0, 0, io.ErrShortBuffer
	}
	src := blk[f.data : f.data+f.snap]
	if tag == 0 {
		copy(dst, src)
	} else {
		copy(dst[:12], src[:12])
		binary.BigEndian.PutUint16(dst[12:], f.tpid)
		binary.BigEndian.PutUint16(dst[14:], f.vlan)
		copy(dst[16:size], src[12:])
	}
	pkt := dst[:size]
	if split {
		if err := r.split.Init(pkt, 14+tag+l3Shift(pkt, tag), &r.hdr); err != nil {
			c.rxDrops.Add(1)
			return 0, 0, nil
		}
		r.split.Start()
		return l.emitSegments(bufs, sizes)
	}
	if r.hdr.Flags&vnet.FlagNeedsCsum != 0 {
		if vnet.CompleteChecksum(pkt, int(r.hdr.CsumStart)+tag, int(r.hdr.CsumOffset)) != nil {
			c.rxDrops.Add(1)
			return 0, 0, nil
		}
	}
	sizes[0] = size
	return 1, uint64(size), nil
}

// l3Shift is the extra link-header length of a frame that carried its own
// 802.1Q tag in the data (not one the kernel took off): 4, or 0.
func l3Shift(pkt []byte, tag int) int {
	if tag == 0 && len(pkt) >= 18 && binary.BigEndian.Uint16(pkt[12:]) == 0x8100 {
		return 4
	}
	return 0
}

// emitSegments writes the next segments of the super packet being split.
func (l *Link) emitSegments(bufs [][]byte, sizes []int) (int, uint64, error) {
	k, bytes, err := l.rxr.split.Emit(bufs, sizes)
	if err != nil { // a buffer under MaxFrameLen: the caller broke the contract
		l.stats.rxDrops.Add(1)
		return k, bytes, io.ErrShortBuffer
	}
	return k, bytes, nil
}

// Wait implements netif.Link.Wait: it returns when a block is ready (the
// kernel wakes the socket when it hands a block over).
func (l *Link) Wait(timeout time.Duration) error {
	if !l.lock() {
		return netif.ErrClosed
	}
	defer l.mu.RUnlock()
	if l.readable() || timeout == 0 {
		return nil
	}
	// Only Wait reads through the raw conn, and each Wait sets its own
	// deadline (none for timeout < 0), so none is left to lift after.
	var dl time.Time
	if timeout > 0 {
		dl = time.Now().Add(timeout)
	}
	if err := l.f.SetReadDeadline(dl); err != nil {
		return l.closedErr(err)
	}
	l.rxr.waited = false
	err := l.rc.Read(l.waitFn)
	if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		return nil
	}
	return l.closedErr(err)
}

// waitOnce is Wait's RawRead callback (bound once in New).
func (l *Link) waitOnce(uintptr) bool {
	if l.rxr.waited {
		return true // woken by the poller (or spuriously, which Wait allows)
	}
	l.rxr.waited = true
	// The poller is edge-triggered: a block handed over before we parked
	// raised its edge already, so look once more first.
	return l.readable()
}

// readable reports whether Read has something: a block in progress,
// segments left, or the next block handed over.
func (l *Link) readable() bool {
	r := &l.rxr
	return r.split.Left() > 0 || r.active || loadStatus(l.rx[r.blk], blkStatusOff)&statusUser != 0
}
