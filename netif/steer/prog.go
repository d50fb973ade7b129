package steer

import (
	"encoding/binary"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// The programs, written with cilium/ebpf's asm so no C compiler is needed.
// Both share one parser and one lookup:
//
//  1. Parse Ethernet II, with at most one 802.1Q/802.1ad tag; then IPv4
//     (any IHL from 5 to 15) or IPv6 (no extension header but a fragment
//     header: the next header must be TCP or UDP); then the TCP or UDP
//     ports. Any frame that does not parse that far is "unparsed" and
//     passes.
//  2. Build the flow key (key.go) on the stack, oriented to the local side:
//     local is the destination. An IPv4 address 0.0.0.0 stays all-zero,
//     as packet.Key normalises it.
//
// Fragments (docs/design.md §8b). A first fragment carries the ports and is
// steered by them like any packet; when it hits, its datagram's fragment
// key (source, destination, identification, protocol: fragKey) goes into
// an LRU map of the program's own, and a later fragment (no ports) is
// steered by that map alone: a hit goes where its first fragment went, a
// miss passes to the kernel, untouched. A first fragment that misses
// deletes its fragment key, so a datagram that reuses an identification
// is not taken from the kernel by a stale entry. This follows the order
// senders emit fragments in (Linux and netstack: first to last); a later
// fragment that overtakes its first on the wire reaches the kernel, and
// the datagram is lost to both sides (the nexus times its set out). The
// map is bounded (fragMapSize) and forgets the least recently used.
//
// ICMP errors. An ICMP destination unreachable, source quench, time
// exceeded or parameter problem (ICMPv6: types 1 to 4) that quotes a TCP
// or UDP packet sent from the address it is addressed to is steered by the
// quoted packet's flow: local is the quoted source. Echo requests and
// other ICMP pass.
//  3. Look the key up as is (connected 5-tuple), then with the remote side
//     zeroed (listener3), then with the local address zeroed too
//     (listener2): the flow table's order (flow.Table.Lookup).
//  4. On a hit, XDP redirects to the AF_XDP socket of the receive queue
//     (bpf_redirect_map with XDP_PASS as the fallback, so a queue without a
//     socket still reaches the kernel), TC drops (TC_ACT_SHOT). On a miss
//     both let the kernel have the frame: XDP_PASS, TC_ACT_UNSPEC (which
//     is TCX_NEXT: the next program, then the stack).
//
// Each outcome is counted in a per-CPU array (Counters).

// fragMapSize bounds a program's fragment map: the datagrams of claimed
// flows in flight in fragments at once. 4096 keys of 40 bytes cost a few
// hundred KiB of kernel memory.
const fragMapSize = 4096

// Counter indexes in a program's per-CPU counters array.
const (
	ctrHit         = iota // XDP: redirected to the socket; TC: dropped
	ctrHitNoSocket        // XDP: a flow matched but no socket is on the queue
	ctrMiss               // parsed, matched no flow: passed
	ctrUnparsed           // not Ethernet/IP/TCP/UDP, a fragment, an IPv6 extension header: passed
	numCounters
)

// Return codes (include/uapi/linux/bpf.h, pkt_cls.h).
const (
	xdpPass     = 2
	xdpRedirect = 4
	tcActUnspec = -1 // also TCX_NEXT
	tcActShot   = 2
)

// Offsets into struct xdp_md and struct __sk_buff (uapi/linux/bpf.h).
const (
	xdpMdData         = 0
	xdpMdDataEnd      = 4
	xdpMdRxQueueIndex = 16
	skbLen            = 0
	skbData           = 76
	skbDataEnd        = 80
)

// maxHeaders is the most header bytes the parser reads: Ethernet (14),
// one VLAN tag (4), an IPv4 header with all options (60), an ICMP header
// (8), the IPv4 header it quotes (60 again), its ports (4). TC asks the
// kernel to make this much linear before parsing.
const maxHeaders = 14 + 4 + 60 + 8 + 60 + 4

// Stack layout: the key at fp-48 (8-aligned, KeyLen bytes), the counter
// index at fp-56, the fragment key at fp-96 (KeyLen bytes), the value the
// fragment map gets at fp-104.
const (
	stackKey     = -48
	stackCounter = -56
	stackFrag    = -96
	stackOne     = -104
)

// Layout of a fragment map key, in the flow key's 40 bytes:
//
//	struct frag_key {
//	    __u8   src[16];  // IPv4 as ::ffff:a.b.c.d
//	    __u8   dst[16];
//	    __be32 id;       // IPv4: the 16-bit identification, then two zero bytes
//	    __u8   version;
//	    __u8   proto;    // IPv4 protocol, or the fragment header's next header
//	    __u8   pad[2];
//	};
const (
	fragSrc     = 0
	fragDst     = 16
	fragID      = 32
	fragVersion = 36
	fragProto   = 37
)

func sk(off int) int16 { return int16(stackKey + off) }
func fk(off int) int16 { return int16(stackFrag + off) }

// be16 is the value a 16-bit load returns for the bytes of v in network
// order: loads are in host order, and the constants compared with packet
// fields must be too.
func be16(v uint16) int32 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return int32(binary.NativeEndian.Uint16(b[:]))
}

type progKind int

const (
	kindXDP progKind = iota
	kindTC
)

// instructions returns the program of kind over the flows map, the
// fragment map and the counters map; xsks is the XSKMAP (XDP only).
func instructions(kind progKind, flows, frags, counters, xsks *ebpf.Map) asm.Instructions {
	R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, FP := asm.R0, asm.R1, asm.R2, asm.R3, asm.R4, asm.R5, asm.R6, asm.R7, asm.R8, asm.R9, asm.RFP
	// R6: the context; R8: zero, for 8-byte stores of zero (asm has no
	// 8-byte store of an immediate); R9: 1 for a first fragment, whose
	// fragment key is at stackFrag. All survive helper calls.
	in := asm.Instructions{asm.Mov.Reg(R6, R1), asm.Mov.Imm(R8, 0), asm.Mov.Imm(R9, 0)}
	// The verifier wants the whole keys initialised before a helper reads them.
	for off := 0; off < KeyLen; off += 8 {
		in = append(in, asm.StoreMem(FP, sk(off), R8, asm.DWord), asm.StoreMem(FP, fk(off), R8, asm.DWord))
	}
	in = append(in, asm.StoreImm(FP, stackOne, 1, asm.Word))
	// R2: cursor into the packet; R3: data_end.
	switch kind {
	case kindXDP:
		in = append(in,
			asm.LoadMem(R2, R6, xdpMdData, asm.Word),
			asm.LoadMem(R3, R6, xdpMdDataEnd, asm.Word),
		)
	case kindTC:
		// An skb may hold its headers outside the linear part, which
		// direct packet access cannot see: pull min(len, maxHeaders)
		// bytes in, but only when needed, since the pull makes a shared
		// skb private (a copy).
		in = append(in,
			asm.LoadMem(R2, R6, skbData, asm.Word),
			asm.LoadMem(R3, R6, skbDataEnd, asm.Word),
			asm.LoadMem(R5, R6, skbLen, asm.Word),
			asm.JLE.Imm(R5, maxHeaders, "tc_len_ok"),
			asm.Mov.Imm(R5, maxHeaders),
			asm.Mov.Reg(R4, R2).WithSymbol("tc_len_ok"),
			asm.Add.Reg(R4, R5),
			asm.JLE.Reg(R4, R3, "parse"),
			asm.Mov.Reg(R1, R6),
			asm.Mov.Reg(R2, R5),
			asm.FnSkbPullData.Call(),
			// The helper invalidates every packet pointer: reload.
			asm.LoadMem(R2, R6, skbData, asm.Word),
			asm.LoadMem(R3, R6, skbDataEnd, asm.Word),
		)
	}
	in = append(in,
		// Ethernet.
		asm.Mov.Reg(R4, R2).WithSymbol("parse"),
		asm.Add.Imm(R4, 14),
		asm.JGT.Reg(R4, R3, "unparsed"),
		asm.LoadMem(R5, R2, 12, asm.Half),
		asm.JEq.Imm(R5, be16(0x8100), "vlan"),
		asm.JEq.Imm(R5, be16(0x88a8), "vlan"),
		asm.Add.Imm(R2, 14),
		asm.Ja.Label("l3"),
		asm.Mov.Reg(R4, R2).WithSymbol("vlan"),
		asm.Add.Imm(R4, 18),
		asm.JGT.Reg(R4, R3, "unparsed"),
		asm.LoadMem(R5, R2, 16, asm.Half),
		asm.Add.Imm(R2, 18),
		asm.JEq.Imm(R5, be16(0x0800), "ipv4").WithSymbol("l3"),
		asm.JEq.Imm(R5, be16(0x86dd), "ipv6"),
		asm.Ja.Label("unparsed"),

		// IPv4: R5 becomes the header length, 20..60.
		asm.Mov.Reg(R4, R2).WithSymbol("ipv4"),
		asm.Add.Imm(R4, 20),
		asm.JGT.Reg(R4, R3, "unparsed"),
	)
	in = append(in, ipv4HeaderLen()...)
	in = append(in,
		// A fragment (MF set or a non-zero offset): its fragment key; a
		// later one is steered by it alone (see above).
		asm.LoadMem(R4, R2, 6, asm.Half),
		asm.And.Imm(R4, be16(0x3fff)),
		asm.JEq.Imm(R4, 0, "v4_whole"),
		asm.StoreImm(FP, fk(fragSrc+10), 0xffff, asm.Half),
		asm.LoadMem(R4, R2, 12, asm.Word),
		asm.StoreMem(FP, fk(fragSrc+12), R4, asm.Word),
		asm.StoreImm(FP, fk(fragDst+10), 0xffff, asm.Half),
		asm.LoadMem(R4, R2, 16, asm.Word),
		asm.StoreMem(FP, fk(fragDst+12), R4, asm.Word),
		asm.LoadMem(R4, R2, 4, asm.Half),
		asm.StoreMem(FP, fk(fragID), R4, asm.Half),
		asm.StoreImm(FP, fk(fragVersion), 4, asm.Byte),
		asm.LoadMem(R4, R2, 9, asm.Byte),
		asm.StoreMem(FP, fk(fragProto), R4, asm.Byte),
		asm.LoadMem(R4, R2, 6, asm.Half),
		asm.And.Imm(R4, be16(0x1fff)),
		asm.JNE.Imm(R4, 0, "frag_later"),
		asm.Mov.Imm(R9, 1),
		asm.LoadMem(R4, R2, 9, asm.Byte).WithSymbol("v4_whole"),
		asm.JEq.Imm(R4, 6, "v4_proto"),
		asm.JEq.Imm(R4, 1, "icmp4"),
		asm.JNE.Imm(R4, 17, "unparsed"),
		asm.StoreMem(FP, sk(offProto), R4, asm.Byte).WithSymbol("v4_proto"),
		asm.StoreImm(FP, sk(offVersion), 4, asm.Byte),
		// Local is the destination. ::ffff:a.b.c.d, or all-zero for 0.0.0.0.
		asm.LoadMem(R4, R2, 16, asm.Word),
		asm.JEq.Imm(R4, 0, "v4_src"),
		asm.StoreImm(FP, sk(offLocal+10), 0xffff, asm.Half),
		asm.StoreMem(FP, sk(offLocal+12), R4, asm.Word),
		asm.LoadMem(R4, R2, 12, asm.Word).WithSymbol("v4_src"),
		asm.JEq.Imm(R4, 0, "v4_l4"),
		asm.StoreImm(FP, sk(offRemote+10), 0xffff, asm.Half),
		asm.StoreMem(FP, sk(offRemote+12), R4, asm.Word),
		asm.Add.Reg(R2, R5).WithSymbol("v4_l4"),
		asm.Ja.Label("l4"),

		// IPv6 without extension headers but a fragment header; R7: the
		// length of the IPv6 headers.
		asm.Mov.Reg(R4, R2).WithSymbol("ipv6"),
		asm.Add.Imm(R4, 40),
		asm.JGT.Reg(R4, R3, "unparsed"),
		asm.LoadMem(R4, R2, 0, asm.Byte),
		asm.RSh.Imm(R4, 4),
		asm.JNE.Imm(R4, 6, "unparsed"),
		asm.Mov.Imm(R7, 40),
		asm.LoadMem(R4, R2, 6, asm.Byte),
		asm.JEq.Imm(R4, 58, "icmp6"),
		asm.JNE.Imm(R4, 44, "v6_nh"),
		asm.Mov.Reg(R4, R2),
		asm.Add.Imm(R4, 48),
		asm.JGT.Reg(R4, R3, "unparsed"),
	)
	for off := 0; off < 32; off += 8 { // source and destination
		in = append(in, asm.LoadMem(R4, R2, int16(8+off), asm.DWord), asm.StoreMem(FP, fk(fragSrc+off), R4, asm.DWord))
	}
	in = append(in,
		asm.LoadMem(R4, R2, 44, asm.Word),
		asm.StoreMem(FP, fk(fragID), R4, asm.Word),
		asm.StoreImm(FP, fk(fragVersion), 6, asm.Byte),
		asm.LoadMem(R4, R2, 40, asm.Byte),
		asm.StoreMem(FP, fk(fragProto), R4, asm.Byte),
		asm.LoadMem(R5, R2, 42, asm.Half),
		asm.And.Imm(R5, be16(0xfff8)),
		asm.JNE.Imm(R5, 0, "frag_later"),
		asm.Mov.Imm(R9, 1),
		asm.Mov.Imm(R7, 48),
		asm.JEq.Imm(R4, 6, "v6_proto").WithSymbol("v6_nh"),
		asm.JNE.Imm(R4, 17, "unparsed"),
		asm.StoreMem(FP, sk(offProto), R4, asm.Byte).WithSymbol("v6_proto"),
		asm.StoreImm(FP, sk(offVersion), 6, asm.Byte),
		asm.LoadMem(R4, R2, 24, asm.DWord), // destination: local
		asm.StoreMem(FP, sk(offLocal), R4, asm.DWord),
		asm.LoadMem(R4, R2, 32, asm.DWord),
		asm.StoreMem(FP, sk(offLocal+8), R4, asm.DWord),
		asm.LoadMem(R4, R2, 8, asm.DWord), // source: remote
		asm.StoreMem(FP, sk(offRemote), R4, asm.DWord),
		asm.LoadMem(R4, R2, 16, asm.DWord),
		asm.StoreMem(FP, sk(offRemote+8), R4, asm.DWord),
		asm.Add.Reg(R2, R7),

		// TCP or UDP: the ports are the first four bytes of either.
		asm.Mov.Reg(R4, R2).WithSymbol("l4"),
		asm.Add.Imm(R4, 4),
		asm.JGT.Reg(R4, R3, "unparsed"),
		asm.LoadMem(R4, R2, 0, asm.Half),
		asm.StoreMem(FP, sk(offRemotePort), R4, asm.Half),
		asm.LoadMem(R4, R2, 2, asm.Half),
		asm.StoreMem(FP, sk(offLocalPort), R4, asm.Half),
		asm.Ja.Label("lookup"),
	)
	in = append(in, icmpErrors()...)
	in = append(in,
		// A later fragment: where its first fragment went, or the kernel.
		asm.LoadMapPtr(R1, frags.FD()).WithSymbol("frag_later"),
		asm.Mov.Reg(R2, FP),
		asm.Add.Imm(R2, stackFrag),
		asm.FnMapLookupElem.Call(),
		asm.JNE.Imm(R0, 0, "hit"),
		asm.Ja.Label("unparsed"),
	)
	lookup := func() asm.Instructions {
		return asm.Instructions{
			asm.LoadMapPtr(R1, flows.FD()),
			asm.Mov.Reg(R2, FP),
			asm.Add.Imm(R2, stackKey),
			asm.FnMapLookupElem.Call(),
			asm.JNE.Imm(R0, 0, "hit"),
		}
	}
	connected := lookup()
	connected[0] = connected[0].WithSymbol("lookup")
	in = append(in, connected...)
	in = append(in,
		asm.StoreMem(FP, sk(offRemote), R8, asm.DWord),
		asm.StoreMem(FP, sk(offRemote+8), R8, asm.DWord),
		asm.StoreImm(FP, sk(offRemotePort), 0, asm.Half),
	)
	in = append(in, lookup()...) // listener3
	in = append(in,
		asm.StoreMem(FP, sk(offLocal), R8, asm.DWord),
		asm.StoreMem(FP, sk(offLocal+8), R8, asm.DWord),
	)
	in = append(in, lookup()...) // listener2

	pass := int32(xdpPass)
	if kind == kindTC {
		pass = tcActUnspec
	}
	in = append(in,
		// A first fragment of no flow: forget its fragment key.
		asm.JEq.Imm(R9, 0, "miss"),
		asm.LoadMapPtr(R1, frags.FD()),
		asm.Mov.Reg(R2, FP),
		asm.Add.Imm(R2, stackFrag),
		asm.FnMapDeleteElem.Call(),
	)
	in = append(in, epilogue(counters, "miss", ctrMiss, asm.Mov.Imm(R0, pass))...)
	in = append(in, epilogue(counters, "unparsed", ctrUnparsed, asm.Mov.Imm(R0, pass))...)
	in = append(in,
		// A hit of a first fragment: its later fragments follow it.
		asm.JEq.Imm(R9, 0, "hit_go").WithSymbol("hit"),
		asm.LoadMapPtr(R1, frags.FD()),
		asm.Mov.Reg(R2, FP),
		asm.Add.Imm(R2, stackFrag),
		asm.Mov.Reg(R3, FP),
		asm.Add.Imm(R3, stackOne),
		asm.Mov.Imm(R4, 0), // BPF_ANY
		asm.FnMapUpdateElem.Call(),
	)
	switch kind {
	case kindXDP:
		in = append(in,
			asm.LoadMapPtr(R1, xsks.FD()).WithSymbol("hit_go"),
			asm.LoadMem(R2, R6, xdpMdRxQueueIndex, asm.Word),
			asm.Mov.Imm(R3, xdpPass), // the fallback when the queue has no socket
			asm.FnRedirectMap.Call(),
			asm.Mov.Reg(R7, R0),
			asm.JNE.Imm(R7, xdpRedirect, "hit_no_socket"),
		)
		in = append(in, epilogue(counters, "hit_redirect", ctrHit, asm.Mov.Reg(R0, R7))...)
		in = append(in, epilogue(counters, "hit_no_socket", ctrHitNoSocket, asm.Mov.Reg(R0, R7))...)
	case kindTC:
		in = append(in, epilogue(counters, "hit_go", ctrHit, asm.Mov.Imm(R0, tcActShot))...)
	}
	return in
}

// epilogue counts outcome idx in the per-CPU counters and returns what ret
// puts in R0. Its first instruction carries label.
func epilogue(counters *ebpf.Map, label string, idx int32, ret asm.Instruction) asm.Instructions {
	R0, R1, R2, FP := asm.R0, asm.R1, asm.R2, asm.RFP
	return asm.Instructions{
		asm.StoreImm(FP, stackCounter, int64(idx), asm.Word).WithSymbol(label),
		asm.LoadMapPtr(R1, counters.FD()),
		asm.Mov.Reg(R2, FP),
		asm.Add.Imm(R2, stackCounter),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(R0, 0, label+"_ret"),
		asm.LoadMem(R1, R0, 0, asm.DWord),
		asm.Add.Imm(R1, 1),
		asm.StoreMem(R0, 0, R1, asm.DWord),
		ret.WithSymbol(label + "_ret"),
		asm.Return(),
	}
}

// icmpErrors returns the parser of ICMP and ICMPv6 errors (see above). It
// starts at "icmp4" (R2 at the IPv4 header, R5 its length, R9 set for a
// first fragment) and at "icmp6" (R2 at the IPv6 header), fills the key
// from the quoted packet, local being its source, and jumps to "lookup";
// anything else goes to "unparsed". R3 is data_end throughout.
func icmpErrors() asm.Instructions {
	R2, R3, R4, R5, R7, R9, FP := asm.R2, asm.R3, asm.R4, asm.R5, asm.R7, asm.R9, asm.RFP
	in := asm.Instructions{
		// IPv4: not a fragment itself; R7 the error's destination.
		asm.JNE.Imm(R9, 0, "unparsed").WithSymbol("icmp4"),
		asm.LoadMem(R7, R2, 16, asm.Word),
		asm.Add.Reg(R2, R5),
		asm.Mov.Reg(R4, R2),
		asm.Add.Imm(R4, 8+20),
		asm.JGT.Reg(R4, R3, "unparsed"),
		asm.LoadMem(R4, R2, 0, asm.Byte),
		asm.JEq.Imm(R4, 3, "icmp4_err"),
		asm.JEq.Imm(R4, 4, "icmp4_err"),
		asm.JEq.Imm(R4, 11, "icmp4_err"),
		asm.JNE.Imm(R4, 12, "unparsed"),
		// The quoted IPv4 header: R5 its length; no later fragment.
		asm.Add.Imm(R2, 8).WithSymbol("icmp4_err"),
	}
	in = append(in, ipv4HeaderLen()...)
	return append(in,
		asm.LoadMem(R4, R2, 6, asm.Half),
		asm.And.Imm(R4, be16(0x1fff)),
		asm.JNE.Imm(R4, 0, "unparsed"),
		asm.LoadMem(R4, R2, 9, asm.Byte),
		asm.JEq.Imm(R4, 6, "icmp4_proto"),
		asm.JNE.Imm(R4, 17, "unparsed"),
		asm.StoreMem(FP, sk(offProto), R4, asm.Byte).WithSymbol("icmp4_proto"),
		asm.StoreImm(FP, sk(offVersion), 4, asm.Byte),
		// Sent by the address the error is for: local is its source.
		asm.LoadMem(R4, R2, 12, asm.Word),
		asm.JNE.Reg(R4, R7, "unparsed"),
		asm.JEq.Imm(R4, 0, "unparsed"),
		asm.StoreImm(FP, sk(offLocal+10), 0xffff, asm.Half),
		asm.StoreMem(FP, sk(offLocal+12), R4, asm.Word),
		asm.LoadMem(R4, R2, 16, asm.Word),
		asm.JEq.Imm(R4, 0, "icmp4_l4"),
		asm.StoreImm(FP, sk(offRemote+10), 0xffff, asm.Half),
		asm.StoreMem(FP, sk(offRemote+12), R4, asm.Word),
		asm.Add.Reg(R2, R5).WithSymbol("icmp4_l4"),
		asm.Ja.Label("icmp_ports"),

		// IPv6: ICMPv6 header, the quoted IPv6 header, its ports.
		asm.Mov.Reg(R4, R2).WithSymbol("icmp6"),
		asm.Add.Imm(R4, 40+8+40+4),
		asm.JGT.Reg(R4, R3, "unparsed"),
		asm.LoadMem(R4, R2, 40, asm.Byte),
		asm.JEq.Imm(R4, 0, "unparsed"),
		asm.JGT.Imm(R4, 4, "unparsed"),
		asm.LoadMem(R4, R2, 48, asm.Byte),
		asm.RSh.Imm(R4, 4),
		asm.JNE.Imm(R4, 6, "unparsed"),
		asm.LoadMem(R4, R2, 48+6, asm.Byte),
		asm.JEq.Imm(R4, 6, "icmp6_proto"),
		asm.JNE.Imm(R4, 17, "unparsed"),
		asm.StoreMem(FP, sk(offProto), R4, asm.Byte).WithSymbol("icmp6_proto"),
		asm.StoreImm(FP, sk(offVersion), 6, asm.Byte),
		// Local: the quoted source, which must be the error's destination.
		asm.LoadMem(R4, R2, 48+8, asm.DWord),
		asm.LoadMem(R5, R2, 24, asm.DWord),
		asm.JNE.Reg(R4, R5, "unparsed"),
		asm.StoreMem(FP, sk(offLocal), R4, asm.DWord),
		asm.LoadMem(R4, R2, 48+16, asm.DWord),
		asm.LoadMem(R5, R2, 32, asm.DWord),
		asm.JNE.Reg(R4, R5, "unparsed"),
		asm.StoreMem(FP, sk(offLocal+8), R4, asm.DWord),
		asm.LoadMem(R4, R2, 48+24, asm.DWord),
		asm.StoreMem(FP, sk(offRemote), R4, asm.DWord),
		asm.LoadMem(R4, R2, 48+32, asm.DWord),
		asm.StoreMem(FP, sk(offRemote+8), R4, asm.DWord),
		asm.Add.Imm(R2, 48+40),

		// The quoted ports: source local, destination remote.
		asm.Mov.Reg(R4, R2).WithSymbol("icmp_ports"),
		asm.Add.Imm(R4, 4),
		asm.JGT.Reg(R4, R3, "unparsed"),
		asm.LoadMem(R4, R2, 0, asm.Half),
		asm.StoreMem(FP, sk(offLocalPort), R4, asm.Half),
		asm.LoadMem(R4, R2, 2, asm.Half),
		asm.StoreMem(FP, sk(offRemotePort), R4, asm.Half),
		asm.Ja.Label("lookup"),
	)
}

// ipv4HeaderLen returns the check of the IPv4 header at R2, whose first 20
// bytes are known to be in the packet: version 4 and IHL at least 5, or
// "unparsed"; R5 gets the header length in bytes (20..60).
func ipv4HeaderLen() asm.Instructions {
	R2, R4, R5 := asm.R2, asm.R4, asm.R5
	return asm.Instructions{
		asm.LoadMem(R5, R2, 0, asm.Byte),
		asm.Mov.Reg(R4, R5),
		asm.RSh.Imm(R4, 4),
		asm.JNE.Imm(R4, 4, "unparsed"),
		asm.And.Imm(R5, 0x0f),
		asm.JLT.Imm(R5, 5, "unparsed"),
		asm.LSh.Imm(R5, 2),
	}
}
