package stack_test

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"

	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/flowswitch"
	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/netif/memif"
	"github.com/skylane/skylane/nexus"
	"github.com/skylane/skylane/packet"
	"github.com/skylane/skylane/packet/packettest"
	"github.com/skylane/skylane/stack"
)

// With checksum offload, netstack leaves the UDP checksum to
// the wire: on a device (a memif wire with FullChecksums) the nexus
// completes it and the endpoint verifies what comes in, dropping a
// corrupt datagram; on a trusted wire it travels as netstack left it, and
// what the far nexus delivers is taken as it is.
func TestChecksumOffload(t *testing.T) {
	var (
		srcMAC = [6]byte{0x02, 0, 0, 0, 0, 1}
		dstMAC = [6]byte{0x02, 0, 0, 0, 0, 2}
	)
	for _, trusted := range []bool{false, true} {
		name := map[bool]string{false: "device", true: "trusted"}[trusted]
		t.Run(name, func(t *testing.T) {
			r := newRigOn(t, stack.Options{ChecksumOffload: true}, nil, memif.Options{QueueLen: 64, FullChecksums: !trusted},
				nexus.Options{Switch: flowswitch.Options{SrcMAC: srcMAC, DstMAC: dstMAC}})
			key := packet.MakeKey(packet.ProtoUDP, netip.AddrPortFrom(local, 5000), netip.AddrPortFrom(peer, 9))
			if err := r.ep.Register(key, flow.Connected); err != nil {
				t.Fatal(err)
			}
			laddr := tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFrom4(local.As4()), Port: 5000}
			raddr := tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFrom4(peer.As4()), Port: 9}
			c, err := gonet.DialUDP(r.ns, &laddr, &raddr, ipv4.ProtocolNumber)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := c.Write([]byte("ping, odd length")); err != nil {
				t.Fatal(err)
			}
			// The frame on the wire.
			buf := [][]byte{make([]byte, netif.MaxFrameLen(r.wire.MTU(), r.wire.LinkType()))}
			sizes := []int{0}
			deadline := time.Now().Add(5 * time.Second)
			for {
				if n, err := r.wire.Read(buf, sizes); err != nil {
					t.Fatal(err)
				} else if n == 1 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("no frame on the wire")
				}
				if err := r.wire.Wait(100 * time.Millisecond); err != nil {
					t.Fatal(err)
				}
			}
			ip := buf[0][14:sizes[0]]
			field := uint16(ip[20+6])<<8 | uint16(ip[20+7])
			if trusted {
				if field != 0 {
					t.Errorf("UDP checksum %#04x on a trusted wire: computed though left to the wire", field)
				}
			} else if field == 0 || !packet.ChecksumsValid(ip) {
				t.Errorf("UDP checksum %#04x on a device: not completed", field)
			}

			// Two datagrams in: a corrupt one, then a good one.
			frame := func(msg string) []byte {
				f := packettest.Frame{Src: netip.AddrPortFrom(peer, 9), Dst: netip.AddrPortFrom(local, 5000),
					Proto: packet.ProtoUDP, Payload: []byte(msg)}
				return f.Bytes()
			}
			bad := frame("corrupt")
			bad[len(bad)-1] ^= 0x40
			if n, err := r.wire.Write([][]byte{bad, frame("good")}); n != 2 || err != nil {
				t.Fatalf("wire write: %d, %v", n, err)
			}
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			got := make([]byte, 64)
			n, err := c.Read(got)
			if err != nil {
				t.Fatal(err)
			}
			want, drops := "good", uint64(1)
			if trusted {
				want, drops = "corrup4", 0 // taken as the trusted nexus vouched for it
			}
			if string(got[:n]) != want {
				t.Errorf("read %q, want %q", got[:n], want)
			}
			if st := r.ep.Stats(); st.RxBadChecksum != drops {
				t.Errorf("RxBadChecksum %d, want %d", st.RxBadChecksum, drops)
			}
		})
	}
}

// fragments cuts the raw IPv4 packet b (no options) into two fragments at
// payload offset at (a multiple of 8).
func fragments(b []byte, at int) [][]byte {
	hdr, pay := b[:20], b[20:]
	mk := func(p []byte, off int, more bool) []byte {
		f := append(append([]byte(nil), hdr...), p...)
		binary.BigEndian.PutUint16(f[2:4], uint16(len(f)))
		fl := uint16(off / 8)
		if more {
			fl |= 0x2000
		}
		binary.BigEndian.PutUint16(f[6:8], fl)
		f[10], f[11] = 0, 0
		binary.BigEndian.PutUint16(f[10:12], ^packet.Fold(packet.Sum(f[:20], 0)))
		return f
	}
	return [][]byte{mk(pay[:at], 0, true), mk(pay[at:], at, false)}
}

// With checksum offload, a fragmented datagram from a device reaches the
// socket when its checksum verifies over all its fragments, and not when
// it does not (netstack, told to verify nothing, would take it).
func TestChecksumOffloadFragments(t *testing.T) {
	var (
		srcMAC = [6]byte{0x02, 0, 0, 0, 0, 1}
		dstMAC = [6]byte{0x02, 0, 0, 0, 0, 2}
	)
	r := newRigOn(t, stack.Options{ChecksumOffload: true}, nil, memif.Options{QueueLen: 64, FullChecksums: true},
		nexus.Options{Switch: flowswitch.Options{SrcMAC: srcMAC, DstMAC: dstMAC}})
	key := packet.MakeKey(packet.ProtoUDP, netip.AddrPortFrom(local, 5000), netip.AddrPortFrom(peer, 9))
	if err := r.ep.Register(key, flow.Connected); err != nil {
		t.Fatal(err)
	}
	laddr := tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFrom4(local.As4()), Port: 5000}
	raddr := tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFrom4(peer.As4()), Port: 9}
	c, err := gonet.DialUDP(r.ns, &laddr, &raddr, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	datagram := func(id uint16, fill byte) [][]byte {
		payload := make([]byte, 1000)
		for i := range payload {
			payload[i] = fill + byte(i)
		}
		f := packettest.Frame{Link: packet.RawIP, Src: netip.AddrPortFrom(peer, 9), Dst: netip.AddrPortFrom(local, 5000),
			Proto: packet.ProtoUDP, ID: id, Payload: payload}
		fr := fragments(f.Bytes(), 504)
		eth := []byte{srcMAC[0], srcMAC[1], srcMAC[2], srcMAC[3], srcMAC[4], srcMAC[5], 2, 0, 0, 0, 0, 9, 0x08, 0x00}
		for i := range fr {
			fr[i] = append(append([]byte(nil), eth...), fr[i]...)
		}
		return fr
	}
	bad := datagram(7, 'a')
	bad[1][len(bad[1])-1] ^= 0x01 // in the second fragment: only the whole datagram tells
	good := datagram(8, 'A')
	for _, fs := range [][][]byte{bad, good} {
		if n, err := r.wire.Write(fs); n != 2 || err != nil {
			t.Fatalf("wire write: %d, %v", n, err)
		}
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	got := make([]byte, 2000)
	n, err := c.Read(got)
	if err != nil {
		t.Fatal(err)
	}
	if n != 1000 || got[0] != 'A' {
		t.Errorf("read %d bytes starting %q, want the good datagram", n, got[:1])
	}
	if st := r.ep.Stats(); st.RxBadChecksum != 1 {
		t.Errorf("RxBadChecksum %d, want 1", st.RxBadChecksum)
	}
}
