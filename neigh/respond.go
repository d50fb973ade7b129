package neigh

// HandleFrame looks at a received Ethernet frame. consumed says it was ARP
// or an IPv6 NS/NA (valid or not): the nexus hands it to no stack. When
// the frame asks for one of the owned addresses, the answer is written
// into reply and n is its length (reply needs NDPFrameLen bytes). Entries
// are learned and confirmed as RFC 826 and RFC 4861 say. Frames with a
// VLAN tag are not looked at (consumed false).
func (r *Resolver) HandleFrame(frame, reply []byte) (n int, consumed bool) {
	if len(frame) < ethHdrLen {
		return 0, false
	}
	switch uint16(frame[12])<<8 | uint16(frame[13]) {
	case etherTypeARP:
		var a ARP
		if err := ParseARP(frame, &a); err != nil {
			r.count(&r.stats.BadFrames)
			return 0, true
		}
		return r.handleARP(&a, reply), true
	case etherTypeIPv6:
		// Only ICMPv6 NS/NA directly after the IPv6 header is ours.
		if len(frame) < ethHdrLen+ipv6HdrLen+1 || frame[ethHdrLen+6] != protoICMPv6 {
			return 0, false
		}
		if t := frame[ethHdrLen+ipv6HdrLen]; t != TypeNS && t != TypeNA {
			return 0, false
		}
		var m NDP
		if err := ParseNDP(frame, &m); err != nil {
			r.count(&r.stats.BadFrames)
			return 0, true
		}
		return r.handleNDP(&m, reply), true
	}
	return 0, false
}

func (r *Resolver) count(c *uint64) {
	r.mu.Lock()
	*c++
	r.mu.Unlock()
}

// handleARP follows RFC 826's "packet reception" algorithm.
func (r *Resolver) handleARP(a *ARP, reply []byte) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.o.Now()
	merged := false
	if !a.SenderIP.IsUnspecified() && a.SenderMAC[0]&1 == 0 {
		if e := r.ents[a.SenderIP]; e != nil {
			r.confirm(e, a.SenderMAC, true, now)
			merged = true
		}
	}
	if !r.owned[a.TargetIP] {
		return 0
	}
	if !merged && !a.SenderIP.IsUnspecified() && a.SenderMAC[0]&1 == 0 {
		if e := r.newEntry(a.SenderIP); e != nil {
			r.confirm(e, a.SenderMAC, true, now)
		}
	}
	if a.Op != ARPRequest {
		return 0
	}
	out := ARP{
		EthDst: a.SenderMAC, EthSrc: r.o.MAC, Op: ARPReply,
		SenderMAC: r.o.MAC, SenderIP: a.TargetIP,
		TargetMAC: a.SenderMAC, TargetIP: a.SenderIP,
	}
	n, err := PutARP(reply, &out)
	if err != nil {
		return 0
	}
	r.stats.RepliesSent++
	return n
}

// handleNDP answers solicitations for owned targets and learns from
// solicitations (RFC 4861 §7.2.3) and advertisements (§7.2.5).
func (r *Resolver) handleNDP(m *NDP, reply []byte) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.o.Now()
	if m.Type == TypeNA {
		if e := r.ents[m.Target]; e != nil && (m.HasLL || e.state != Incomplete) {
			mac := e.mac
			if m.HasLL {
				mac = m.LL
			}
			switch {
			case m.Flags&FlagSolicited != 0:
				r.confirm(e, mac, true, now)
			case e.state == Incomplete || m.Flags&FlagOverride != 0 && mac != e.mac:
				r.confirm(e, mac, false, now)
			}
		}
		return 0
	}
	if !r.owned[m.Target] {
		return 0
	}
	dad := m.Src.IsUnspecified()
	if !dad && m.HasLL {
		e := r.ents[m.Src]
		if e == nil {
			e = r.newEntry(m.Src)
		}
		if e != nil && (e.state == Incomplete || e.mac != m.LL) {
			r.confirm(e, m.LL, false, now) // a solicitation proves nothing about reachability: Stale
		}
	}
	out := NDP{
		EthSrc: r.o.MAC, Src: m.Target, Type: TypeNA, Target: m.Target,
		Flags: FlagSolicited | FlagOverride, LL: r.o.MAC, HasLL: true,
	}
	switch {
	case dad: // a duplicate address probe: tell everyone (RFC 4861 §7.2.4)
		out.Dst, out.EthDst, out.Flags = allNodes, MulticastMAC(allNodes), FlagOverride
	case m.HasLL:
		out.Dst, out.EthDst = m.Src, m.LL
	default:
		out.Dst, out.EthDst = m.Src, m.EthSrc
	}
	n, err := PutNDP(reply, &out)
	if err != nil {
		return 0
	}
	r.stats.RepliesSent++
	return n
}
