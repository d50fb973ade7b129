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
//     (any IHL from 5 to 15, not a fragment) or IPv6 (no extension header:
//     the next header must be TCP or UDP); then the TCP or UDP ports. Any
//     frame that does not parse that far is "unparsed" and passes.
//  2. Build the flow key (key.go) on the stack, oriented to the local side:
//     local is the destination. An IPv4 address 0.0.0.0 stays all-zero,
//     as packet.Key normalises it.
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
// one VLAN tag (4), an IPv4 header with all options (60), the ports (4).
// TC asks the kernel to make this much linear before parsing.
const maxHeaders = 14 + 4 + 60 + 4

// Stack layout: the key at fp-48 (8-aligned, KeyLen bytes), the counter
// index at fp-56.
const (
	stackKey     = -48
	stackCounter = -56
)

func sk(off int) int16 { return int16(stackKey + off) }

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

// instructions returns the program of kind over the flows map and the
// counters map; xsks is the XSKMAP (XDP only).
func instructions(kind progKind, flows, counters, xsks *ebpf.Map) asm.Instructions {
	R0, R1, R2, R3, R4, R5, R6, R7, R8, FP := asm.R0, asm.R1, asm.R2, asm.R3, asm.R4, asm.R5, asm.R6, asm.R7, asm.R8, asm.RFP
	// R6: the context; R8: zero, for 8-byte stores of zero (asm has no
	// 8-byte store of an immediate). Both survive helper calls.
	in := asm.Instructions{asm.Mov.Reg(R6, R1), asm.Mov.Imm(R8, 0)}
	// The verifier wants the whole key initialised before a helper reads it.
	for off := 0; off < KeyLen; off += 8 {
		in = append(in, asm.StoreMem(FP, sk(off), R8, asm.DWord))
	}
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
		asm.LoadMem(R5, R2, 0, asm.Byte),
		asm.Mov.Reg(R4, R5),
		asm.RSh.Imm(R4, 4),
		asm.JNE.Imm(R4, 4, "unparsed"),
		asm.And.Imm(R5, 0x0f),
		asm.JLT.Imm(R5, 5, "unparsed"),
		asm.LSh.Imm(R5, 2),
		// A fragment (MF set or a non-zero offset) passes: later fragments
		// carry no ports, and the kernel reassembles.
		asm.LoadMem(R4, R2, 6, asm.Half),
		asm.And.Imm(R4, be16(0x3fff)),
		asm.JNE.Imm(R4, 0, "unparsed"),
		asm.LoadMem(R4, R2, 9, asm.Byte),
		asm.JEq.Imm(R4, 6, "v4_proto"),
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

		// IPv6 without extension headers.
		asm.Mov.Reg(R4, R2).WithSymbol("ipv6"),
		asm.Add.Imm(R4, 40),
		asm.JGT.Reg(R4, R3, "unparsed"),
		asm.LoadMem(R4, R2, 0, asm.Byte),
		asm.RSh.Imm(R4, 4),
		asm.JNE.Imm(R4, 6, "unparsed"),
		asm.LoadMem(R4, R2, 6, asm.Byte),
		asm.JEq.Imm(R4, 6, "v6_proto"),
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
		asm.Add.Imm(R2, 40),

		// TCP or UDP: the ports are the first four bytes of either.
		asm.Mov.Reg(R4, R2).WithSymbol("l4"),
		asm.Add.Imm(R4, 4),
		asm.JGT.Reg(R4, R3, "unparsed"),
		asm.LoadMem(R4, R2, 0, asm.Half),
		asm.StoreMem(FP, sk(offRemotePort), R4, asm.Half),
		asm.LoadMem(R4, R2, 2, asm.Half),
		asm.StoreMem(FP, sk(offLocalPort), R4, asm.Half),
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
	in = append(in, lookup()...) // connected
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
	in = append(in, epilogue(counters, "miss", ctrMiss, asm.Mov.Imm(R0, pass))...)
	in = append(in, epilogue(counters, "unparsed", ctrUnparsed, asm.Mov.Imm(R0, pass))...)
	switch kind {
	case kindXDP:
		in = append(in,
			asm.LoadMapPtr(R1, xsks.FD()).WithSymbol("hit"),
			asm.LoadMem(R2, R6, xdpMdRxQueueIndex, asm.Word),
			asm.Mov.Imm(R3, xdpPass), // the fallback when the queue has no socket
			asm.FnRedirectMap.Call(),
			asm.Mov.Reg(R7, R0),
			asm.JNE.Imm(R7, xdpRedirect, "hit_no_socket"),
		)
		in = append(in, epilogue(counters, "hit_redirect", ctrHit, asm.Mov.Reg(R0, R7))...)
		in = append(in, epilogue(counters, "hit_no_socket", ctrHitNoSocket, asm.Mov.Reg(R0, R7))...)
	case kindTC:
		in = append(in, epilogue(counters, "hit", ctrHit, asm.Mov.Imm(R0, tcActShot))...)
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
