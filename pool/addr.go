package pool

// AddrCache turns buffer indices into device (I/O) addresses with one lookup
// per segment: consecutive buffers of one segment cost one lookup. Keep one
// per batch (or per driver loop); it is a value, not shared.
type AddrCache struct {
	p    *Pool
	seg  uint32
	base uint64
	ok   bool
}

// NewAddrCache returns a cache over p.
func (p *Pool) NewAddrCache() AddrCache { return AddrCache{p: p} }

// Addr returns the I/O address of buffer idx: its offset in the device
// region (for AF_XDP, the UMEM address).
func (c *AddrCache) Addr(idx uint32) uint64 {
	seg, i := c.p.split(idx)
	if !c.ok || seg != c.seg {
		c.seg, c.base, c.ok = seg, c.p.ioBase(seg), true
	}
	return c.base + uint64(i)*uint64(c.p.bufSize)
}

// ioBase is the per-segment lookup: where the segment starts in the device
// region. It is the one place a driver with scattered segments (IOMMU,
// separately registered memory) would translate.
func (p *Pool) ioBase(seg uint32) uint64 {
	p.stats.AddrLookups++
	return uint64(seg) * uint64(p.segSize)
}
