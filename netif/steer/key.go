package steer

import (
	"encoding/binary"
	"fmt"

	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/packet"
)

// Layout of a flow map key: the fields of packet.Key the BPF programs can
// build from a received frame, in a fixed C-like struct that is the same
// on every architecture. The programs build it on their stack, so every
// field sits at an offset aligned to its size (the verifier requires
// aligned stack access).
//
//	struct flow_key {
//	    __u8   local[16];   // destination address; IPv4 as ::ffff:a.b.c.d; all-zero = any
//	    __u8   remote[16];  // source address, same form; all-zero in listener keys
//	    __be16 local_port;  // destination port, network byte order
//	    __be16 remote_port; // source port, network byte order; 0 in listener keys
//	    __u8   version;     // 4 or 6
//	    __u8   proto;       // IPPROTO_TCP or IPPROTO_UDP
//	    __u8   pad[2];      // always zero
//	};
//
// Ports stay in network byte order so the programs copy them from the
// packet without swapping.
const (
	KeyLen = 40

	offLocal      = 0
	offRemote     = 16
	offLocalPort  = 32
	offRemotePort = 34
	offVersion    = 36
	offProto      = 37
	offPad        = 38
)

// Key is a flow map key in the layout above.
type Key [KeyLen]byte

// valueLen is the size of a flow map value: a __u32 holding the key's
// shape (kindConnected, kindListener3, kindListener2). The programs only
// test presence; the shape is there for whoever dumps the map (bpftool).
const valueLen = 4

const (
	kindConnected uint32 = iota + 1
	kindListener3
	kindListener2
)

// kind returns the shape of k, as the flow table names it.
func (m *Key) kind() uint32 {
	var zero [16]byte
	switch {
	case [16]byte(m[offRemote:offRemote+16]) != zero || m[offRemotePort] != 0 || m[offRemotePort+1] != 0:
		return kindConnected
	case [16]byte(m[offLocal:offLocal+16]) != zero:
		return kindListener3
	}
	return kindListener2
}

// MakeKey converts a flow key of the flow table into a map key. Only TCP and
// UDP flows of IPv4 and IPv6 can be steered: the programs parse nothing
// else, so anything else would never match; MakeKey refuses it with
// netif.ErrNotSteerable.
func MakeKey(k packet.Key) (Key, error) {
	var m Key
	if k.Version != 4 && k.Version != 6 {
		return m, fmt.Errorf("steer: key %v: IP version %d: %w", k, k.Version, netif.ErrNotSteerable)
	}
	if k.Proto != packet.ProtoTCP && k.Proto != packet.ProtoUDP {
		return m, fmt.Errorf("steer: key %v: protocol %d (only TCP and UDP are steered; the kernel keeps the rest): %w",
			k, k.Proto, netif.ErrNotSteerable)
	}
	// packet.Key already holds addresses as 16 bytes, IPv4 v4-mapped and
	// "any" all-zero: the programs write the same form.
	copy(m[offLocal:], k.Local[:])
	copy(m[offRemote:], k.Remote[:])
	binary.BigEndian.PutUint16(m[offLocalPort:], k.LocalPort)
	binary.BigEndian.PutUint16(m[offRemotePort:], k.RemotePort)
	m[offVersion] = k.Version
	m[offProto] = k.Proto
	return m, nil
}

// PacketKey converts a map key back (for listings and tests).
func (m Key) PacketKey() packet.Key {
	var k packet.Key
	copy(k.Local[:], m[offLocal:offLocal+16])
	copy(k.Remote[:], m[offRemote:offRemote+16])
	k.LocalPort = binary.BigEndian.Uint16(m[offLocalPort:])
	k.RemotePort = binary.BigEndian.Uint16(m[offRemotePort:])
	k.Version = m[offVersion]
	k.Proto = m[offProto]
	return k
}
