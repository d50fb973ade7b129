package neigh

import "net/netip"

// holdPool is what both resolvers share of their hold queues: how many
// packets are held in all, and the buffers of released ones, reused so
// that steady holding does not allocate. Each queue is a slice of held
// packets, oldest first, that its entry owns. Guarded by the owner's lock.
type holdPool struct {
	held int
	free [][]byte
}

// push appends a copy of pkt to q and returns q.
func (h *holdPool) push(q [][]byte, pkt []byte) [][]byte {
	var buf []byte
	if k := len(h.free); k > 0 {
		buf, h.free = h.free[k-1][:0], h.free[:k-1]
	}
	h.held++
	return append(q, append(buf, pkt...))
}

// release writes q's packets, oldest first, as frames from src to dst
// (ip: their destination, whose family names the EtherType) into
// bufs[n:limit], and returns what is left of q and the new n. A packet
// that does not fit its buffer is dropped, counted as expired.
func (h *holdPool) release(q [][]byte, bufs [][]byte, sizes []int, n, limit int, dst, src MAC, ip netip.Addr, st *Stats) ([][]byte, int) {
	for len(q) > 0 && n < limit {
		p := q[0]
		m := putFrame(bufs[n], dst, src, ip, p)
		q = q[1:]
		h.held--
		h.free = append(h.free, p)
		if m == 0 {
			st.PendingExpired++
			continue
		}
		sizes[n] = m
		n++
		st.PendingSent++
	}
	if len(q) == 0 {
		q = nil
	}
	return q, n
}

// drop forgets q's packets and returns an empty queue.
func (h *holdPool) drop(q [][]byte) [][]byte {
	h.free = append(h.free, q...)
	h.held -= len(q)
	clear(q)
	return nil
}
