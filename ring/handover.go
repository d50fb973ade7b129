package ring

import (
	"fmt"
	"sync/atomic"
)

// Handing an end to another process (a nexus takeover): the private
// indices travel with the end, never re-read from the shared words a peer
// may have scribbled over. The restored end republishes its own index and
// validates the peer's as always, on its next refresh.

// ProducerState is a producer end's private truth.
type ProducerState struct {
	Prod       uint32 `json:"prod"`
	CachedCons uint32 `json:"cached_cons"`
}

// ConsumerState is a consumer end's private truth.
type ConsumerState struct {
	Cons       uint32 `json:"cons"`
	CachedProd uint32 `json:"cached_prod"`
}

// State returns the producer's private indices.
func (p *Producer) State() ProducerState { return ProducerState{p.prod, p.cachedCons} }

// State returns the consumer's private indices.
func (c *Consumer) State() ConsumerState { return ConsumerState{c.cons, c.cachedProd} }

// RestoreProducer attaches a producer end to the initialised ring in mem
// with the indices State returned in the process that held it.
func RestoreProducer(mem []byte, size int, st ProducerState) (*Producer, error) {
	v, err := newView(mem, size)
	if err != nil {
		return nil, err
	}
	if st.Prod-st.CachedCons > v.size {
		return nil, fmt.Errorf("restore producer: prod %d cons %d on %d slots: %w", st.Prod, st.CachedCons, size, ErrCorrupt)
	}
	atomic.StoreUint32(v.prod, st.Prod)
	return &Producer{view: v, prod: st.Prod, cachedCons: st.CachedCons}, nil
}

// RestoreConsumer attaches a consumer end to the initialised ring in mem
// with the indices State returned in the process that held it.
func RestoreConsumer(mem []byte, size int, st ConsumerState) (*Consumer, error) {
	v, err := newView(mem, size)
	if err != nil {
		return nil, err
	}
	if st.CachedProd-st.Cons > v.size {
		return nil, fmt.Errorf("restore consumer: prod %d cons %d on %d slots: %w", st.CachedProd, st.Cons, size, ErrCorrupt)
	}
	atomic.StoreUint32(v.cons, st.Cons)
	return &Consumer{view: v, cons: st.Cons, cachedProd: st.CachedProd}, nil
}
