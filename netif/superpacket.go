package netif

// SuperPacketLink is implemented by a Link whose device moves GSO/GRO super
// packets: one TCP (or UDP) packet with a single set of headers standing for
// many wire-sized segments, up to MaxSuperPacketLen bytes (tun with
// offloads, afpacket, memif with Options.MaxSuperPacketLen). It is optional: the nexus type-asserts its link, and
// everything below is an extension of the Link contract, which otherwise
// holds unchanged (buffers stay the caller's, Write never blocks, one
// reader and one writer).
//
//	if s, ok := link.(netif.SuperPacketLink); ok && s.MaxSuperPacketLen() > netif.MaxFrameLen(link.MTU(), link.LinkType()) {
//		// size receive buffers to s.MaxSuperPacketLen(); send with s.WriteGSO
//	}
//
// Who segments. On receive the Link does, in user space, only when it must
// (the caller's buffer is too small, or the super packet is UDP); on
// transmit it never does: the kernel (or the NIC) cuts the super packet
// into segments after the Link hands it over with a virtio-net header, or
// an in-memory wire (memif) carries it whole to the other end's Read.
//
// Read. A bufs[i] of at least MaxSuperPacketLen bytes receives a TCP super
// packet whole, as GRO would have built it: one valid frame whose IP length
// covers all of it, with complete IP and TCP checksums and the first
// segment's sequence number. No segment size is reported: TCP is a byte
// stream and the receiver acknowledges bytes, not segments. A buffer
// shorter than that (but at least MaxFrameLen, as every Link requires)
// receives the super packet split into valid segments of at most
// MaxFrameLen bytes, in order, across the following buffers and, if the
// batch runs out, the following Read calls. A UDP super packet (USO) is
// always split into the datagrams it stands for, whatever the buffer size:
// datagram boundaries are data, and one 60 KB datagram is not what its
// sender sent. A link that learns no datagram size from its device (AF_XDP
// carries none) cannot split one, and drops it with a named counter
// instead; it never delivers it whole.
//
// WriteGSO. frames[i] up to MaxFrameLen goes out as it is (its checksums
// are the caller's) and ignores segSizes. A longer frames[i], up to
// MaxSuperPacketLen, is a super packet: a TCP or UDP packet over IPv4 or
// IPv6 (no IP options beyond IPv4's, no extension headers) whose headers are
// those of its first segment. The kernel cuts its payload into
// segSizes[i]-byte pieces (the TCP MSS; for UDP the datagram payload) and
// sends each with the headers copied and fixed up (lengths, IPv4 IDs, TCP
// sequence numbers and flags, checksums); the caller's L4 checksum field
// is ignored by a device that segments. A [TrustedWire] that carries the
// super packet whole (memif) computes no checksum: the far end's Read
// delivers the caller's bytes, complete or not (the far nexus tells its
// apps they need no check), and only the segments a Read has to cut get
// fresh ones; over a memif wire that is not trusted the caller completes
// the checksum of a super packet that must arrive valid. segSizes[i] == 0, or i >= len(segSizes), means TCP segments
// of MTU bytes; a UDP super packet must name its size. A frame that cannot
// go as a super packet (not TCP/UDP, UDP without a size, headers that do
// not parse, longer than MaxSuperPacketLen) stops the batch with
// ErrFrameTooLarge, as Write does for a long frame; the frames before it
// were handled as usual. Write(frames) is WriteGSO(frames, nil). Like
// Write, WriteGSO copies (or hands the kernel) every frame before it
// returns and tail-drops what a full device cannot take, counting it in
// Stats.TxDrops.
//
// A Link that implements SuperPacketLink but reports MaxSuperPacketLen ==
// MaxFrameLen(MTU, LinkType) (tun with offloads off) carries no super
// packets: Read never returns one and WriteGSO behaves as Write.
type SuperPacketLink interface {
	// MaxSuperPacketLen is the longest frame, link header included, that
	// Read delivers whole and WriteGSO accepts: at least
	// MaxFrameLen(MTU, LinkType). Immutable.
	MaxSuperPacketLen() int
	// WriteGSO is Write with a segment size per frame; see the type's doc.
	WriteGSO(frames [][]byte, segSizes []int) (n int, err error)
}
