package packet

import (
	"encoding/binary"
	"math/bits"
	"math/rand/v2"
	"net/netip"
	"strconv"
)

// Key identifies a flow from the local side (docs/design.md §4). It is comparable,
// holds no pointers and has a fixed size (40 bytes), so it can be a Go map
// key and be copied into shared tables.
//
// Addresses are 16 bytes, IPv4 in the v4-mapped form ::ffff:a.b.c.d, with
// Version telling the families apart. An all-zero address means "any": it is
// what unspecified addresses (0.0.0.0, ::) and the listener masks produce.
//
// For ICMP and ICMPv6 the local port is the echo identifier and the remote
// port is always 0, the convention of Linux ping sockets and gVisor: a reply
// to a request the app sent finds the app's flow. Non-echo ICMP messages and
// protocols without ports have both ports 0.
type Key struct {
	_          [0]uint64 // 8-byte alignment, so copies are whole words
	Local      [16]byte
	Remote     [16]byte
	LocalPort  uint16
	RemotePort uint16
	Version    uint8 // 4 or 6; 0 only in the zero Key
	Proto      uint8 // IP protocol number, e.g. ProtoTCP
}

// RxKey returns the key of a received packet: local is the destination.
// It is meaningful only for IP packets (IPVersion != 0). A later fragment has
// no ports, so its key has both ports 0.
func (p *Parsed) RxKey() Key {
	var k Key
	p.RxKeyTo(&k)
	return k
}

// TxKey returns the key of a packet to be transmitted: local is the source.
// It is meaningful only for IP packets (IPVersion != 0).
func (p *Parsed) TxKey() Key {
	var k Key
	p.TxKeyTo(&k)
	return k
}

// RxKeyTo stores p.RxKey() in *k. A packet path that keeps keys in an
// array uses it: building the key in place, field by field, avoids the
// 40-byte copy of a returned Key, whose overlapping vector stores stall the
// word loads that compare and hash the key right after.
func (p *Parsed) RxKeyTo(k *Key) { p.keyTo(k, &p.dst, &p.src, p.DstPort, p.SrcPort) }

// TxKeyTo stores p.TxKey() in *k (see RxKeyTo).
func (p *Parsed) TxKeyTo(k *Key) { p.keyTo(k, &p.src, &p.dst, p.SrcPort, p.DstPort) }

// keyTo fills *k and normalizes it as normalize does. An IPv4 address in
// Parsed is always v4-mapped, so it is "any" when its last four bytes are
// zero. The addresses are copied in 8-byte words, the size Equal and Hash
// read them in: a word load from the middle of a 16-byte store is not
// forwarded on every CPU and waits for the store to reach the cache.
func (p *Parsed) keyTo(k *Key, local, remote *[16]byte, lport, rport uint16) {
	le := binary.LittleEndian
	l0, l1 := le.Uint64(local[0:8]), le.Uint64(local[8:16])
	r0, r1 := le.Uint64(remote[0:8]), le.Uint64(remote[8:16])
	if p.IPVersion == 4 {
		if l1>>32 == 0 {
			l0, l1 = 0, 0
		}
		if r1>>32 == 0 {
			r0, r1 = 0, 0
		}
	}
	le.PutUint64(k.Local[0:8], l0)
	le.PutUint64(k.Local[8:16], l1)
	le.PutUint64(k.Remote[0:8], r0)
	le.PutUint64(k.Remote[8:16], r1)
	k.LocalPort, k.RemotePort = lport, rport
	k.Version, k.Proto = p.IPVersion, p.Proto
	if isICMP(k.Proto) {
		k.RemotePort = 0
	}
}

// Equal reports whether k and o are the same key, as k == o does, but
// cheaper: the generated == on a Key compares it through a call to
// memequal, whereas field by field the compiler compares each address in two
// word loads, and Equal is small enough to be inlined in the packet paths.
func (k *Key) Equal(o *Key) bool {
	return k.Local == o.Local && k.Remote == o.Remote && k.LocalPort == o.LocalPort &&
		k.RemotePort == o.RemotePort && k.Version == o.Version && k.Proto == o.Proto
}

// tail packs the key's ports, version and protocol into one word.
func (k *Key) tail() uint64 {
	return uint64(k.LocalPort) | uint64(k.RemotePort)<<16 | uint64(k.Version)<<32 | uint64(k.Proto)<<40
}

// v4Any is 0.0.0.0 in the v4-mapped form Key and Parsed use.
var v4Any = [16]byte{10: 0xff, 11: 0xff}

// normalize makes 0.0.0.0 "any" (:: already is all zero) and clears the
// remote port of ICMP.
func (k *Key) normalize() {
	if k.Local == v4Any {
		k.Local = [16]byte{}
	}
	if k.Remote == v4Any {
		k.Remote = [16]byte{}
	}
	if isICMP(k.Proto) {
		k.RemotePort = 0
	}
}

// MakeKey builds the key of a flow from its local and remote endpoints. The
// version is the local address's family (after unmapping a v4-mapped IPv6
// address), or the remote's if local has no address. A zero or unspecified
// address becomes "any", as does an invalid remote AddrPort{}: so
// MakeKey(proto, local, netip.AddrPort{}) is a 3-tuple listener key.
func MakeKey(proto uint8, local, remote netip.AddrPort) Key {
	la, ra := local.Addr().Unmap(), remote.Addr().Unmap()
	v := la
	if !v.IsValid() {
		v = ra
	}
	var version uint8
	switch {
	case v.Is4():
		version = 4
	case v.Is6():
		version = 6
	}
	k := Key{Local: la.As16(), Remote: ra.As16(), LocalPort: local.Port(), RemotePort: remote.Port(),
		Version: version, Proto: proto}
	k.normalize()
	return k
}

// Listener3 returns k masked to a listener on one local address: the protocol
// and the local address and port, the remote side zeroed. The flowswitch
// looks a packet up as k, then k.Listener3(), then k.Listener2().
func (k Key) Listener3() Key {
	k.Remote = [16]byte{}
	k.RemotePort = 0
	return k
}

// Listener2 returns k masked to a listener on any local address: the
// protocol and the local port, both addresses and the remote port zeroed.
// The version is kept, so IPv4 and IPv6 listeners stay apart.
func (k Key) Listener2() Key {
	k.Local = [16]byte{}
	k.Remote = [16]byte{}
	k.RemotePort = 0
	return k
}

// Reverse returns the key seen from the other end: local and remote swapped.
// For ICMP, whose remote port is always 0, the ports are left as they are.
func (k Key) Reverse() Key {
	k.Local, k.Remote = k.Remote, k.Local
	if !isICMP(k.Proto) {
		k.LocalPort, k.RemotePort = k.RemotePort, k.LocalPort
	}
	return k
}

// LocalAddrPort returns the local address and port; "any" is 0.0.0.0 or ::.
func (k Key) LocalAddrPort() netip.AddrPort {
	return netip.AddrPortFrom(k.addr(&k.Local), k.LocalPort)
}

// RemoteAddrPort returns the remote address and port; "any" is 0.0.0.0 or ::.
func (k Key) RemoteAddrPort() netip.AddrPort {
	return netip.AddrPortFrom(k.addr(&k.Remote), k.RemotePort)
}

func (k Key) addr(a *[16]byte) netip.Addr {
	if k.Version == 4 {
		return netip.AddrFrom4([4]byte(a[12:16]))
	}
	return netip.AddrFrom16(*a)
}

// String formats k as "tcp4 local=198.18.0.1:80 remote=198.18.0.2:40000",
// with "*" for an "any" address. Protocols without a name print as
// "proto47/4".
func (k Key) String() string {
	var name string
	switch k.Proto {
	case ProtoTCP:
		name = "tcp"
	case ProtoUDP:
		name = "udp"
	case ProtoICMP, ProtoICMPv6:
		name = "icmp"
	default:
		name = "proto" + strconv.Itoa(int(k.Proto)) + "/"
	}
	return name + strconv.Itoa(int(k.Version)) +
		" local=" + k.endpoint(&k.Local, k.LocalPort) +
		" remote=" + k.endpoint(&k.Remote, k.RemotePort)
}

func (k Key) endpoint(a *[16]byte, port uint16) string {
	if *a == [16]byte{} {
		return "*:" + strconv.Itoa(int(port))
	}
	return netip.AddrPortFrom(k.addr(a), port).String()
}

// hashSeed makes Hash differ from one process to the next, so that a remote
// sender cannot precompute keys that collide in the flow table.
var hashSeed = rand.Uint64()

// Hash returns a 64-bit hash of k, seeded per process (see HashSeed). It does
// not allocate and takes a few nanoseconds. Like Equal it takes a pointer:
// the 40-byte copy of a value receiver, read back word by word at once,
// stalls store forwarding for as long as the hash itself takes.
func (k *Key) Hash() uint64 { return k.HashSeed(hashSeed) }

// HashSeed returns a 64-bit hash of k under seed: the same seed gives the same
// hash in every process. It folds 64-bit words with 128-bit multiplies, as
// wyhash does, then applies murmur3's 64-bit finalizer; it is fast and
// spreads well, but it is not a cryptographic MAC, so a seed an attacker may
// know gives no protection against floods.
func (k *Key) HashSeed(seed uint64) uint64 {
	const (
		// wyhash's secret constants: odd, with 32 set bits each.
		k0 = 0xa0761d6478bd642f
		k1 = 0xe7037ed1a0b428db
		k2 = 0x8ebc6af09c88c6e3
		k3 = 0x589965cc75374cc3
	)
	l0 := binary.LittleEndian.Uint64(k.Local[0:8])
	l1 := binary.LittleEndian.Uint64(k.Local[8:16])
	r0 := binary.LittleEndian.Uint64(k.Remote[0:8])
	r1 := binary.LittleEndian.Uint64(k.Remote[8:16])
	tail := k.tail()
	s := seed ^ k0
	h := mix(l0^s, l1^k1) ^ mix(r0^k2, r1^s^k3)
	h = mix(h^k1, tail^s^k2)
	// A single fold keeps the low bits of keys that differ only in a port
	// too regular for power-of-two tables; murmur3's finalizer spreads them.
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	h ^= h >> 33
	return h
}

// mix multiplies a and b to 128 bits and folds the halves together.
func mix(a, b uint64) uint64 {
	hi, lo := bits.Mul64(a, b)
	return hi ^ lo
}

func isICMP(proto uint8) bool { return proto == ProtoICMP || proto == ProtoICMPv6 }
