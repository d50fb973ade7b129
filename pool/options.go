package pool

import (
	"errors"
	"fmt"
	"time"

	"github.com/skylane/skylane/internal/shm"
)

// Defaults (docs/design.md §2).
const (
	DefaultBufferSize   = 2048
	MinBufferSize       = 512
	MaxBufferSize       = 16 << 10
	DefaultSegmentSize  = 32 << 10
	MinSegmentSize      = 16 << 10
	HugeSegmentSize     = 2 << 20
	DefaultMinSegments  = 1
	DefaultMaxSegments  = 256 // 8 MiB of 2 KiB buffers per app by default
	DefaultIdleTimeout  = 10 * time.Second
	DefaultReapInterval = time.Second

	// UserMetaLen is the bytes of app-visible metadata per buffer (Meta).
	UserMetaLen = 32
	// nexusMetaLen is the bytes of nexus-only metadata per buffer.
	nexusMetaLen = 8
	// MaxBuffers bounds the buffer index space so indices fit a ring slot
	// and the nexus's bookkeeping stays small.
	MaxBuffers = 1 << 24
)

// ErrExhausted means the pool is at its maximum size and has no free buffer.
var ErrExhausted = errors.New("pool: exhausted")

// Options configures a Pool. Zero fields take the defaults.
type Options struct {
	Name        string // for diagnostics (memfd names)
	BufferSize  int    // bytes per buffer, 512..16384, dividing SegmentSize
	SegmentSize int    // bytes per buffer segment, a multiple of the page size, ≥ 16 KiB
	HugePages   bool   // back buffers with 2 MiB huge pages (SegmentSize defaults to 2 MiB)
	MinSegments int    // segments kept even when idle (≥ 1)
	MaxSegments int    // segments at most; past them allocation fails at once
	// LowWatermark: when fewer buffers are free, the pool grows by a
	// segment. Default: half a segment's buffers, at least 32 (one batch).
	LowWatermark int
	// IdleTimeout: a fully free segment idle this long is returned to the OS.
	IdleTimeout time.Duration
}

func (o Options) withDefaults() Options {
	if o.BufferSize == 0 {
		o.BufferSize = DefaultBufferSize
	}
	if o.SegmentSize == 0 {
		o.SegmentSize = DefaultSegmentSize
		if o.HugePages {
			o.SegmentSize = HugeSegmentSize
		}
	}
	if o.MinSegments == 0 {
		o.MinSegments = DefaultMinSegments
	}
	if o.MaxSegments == 0 {
		o.MaxSegments = max(DefaultMaxSegments, o.MinSegments)
	}
	if o.LowWatermark == 0 && o.BufferSize > 0 && o.SegmentSize >= o.BufferSize {
		o.LowWatermark = max(32, o.SegmentSize/o.BufferSize/2)
	}
	if o.IdleTimeout == 0 {
		o.IdleTimeout = DefaultIdleTimeout
	}
	return o
}

// validate checks every option before any memory is made.
func (o Options) validate() error {
	page := shm.PageSize
	if o.HugePages {
		page = HugeSegmentSize
	}
	switch {
	case o.BufferSize < MinBufferSize || o.BufferSize > MaxBufferSize:
		return fmt.Errorf("pool %q: buffer size %d outside [%d, %d]", o.Name, o.BufferSize, MinBufferSize, MaxBufferSize)
	case o.SegmentSize < MinSegmentSize || o.SegmentSize%page != 0:
		return fmt.Errorf("pool %q: segment size %d must be a multiple of the page size %d and at least %d", o.Name, o.SegmentSize, page, MinSegmentSize)
	case o.SegmentSize%o.BufferSize != 0:
		return fmt.Errorf("pool %q: buffer size %d does not divide segment size %d (a buffer may not cross a segment)", o.Name, o.BufferSize, o.SegmentSize)
	case o.MinSegments < 1 || o.MaxSegments < o.MinSegments:
		return fmt.Errorf("pool %q: need 1 ≤ min segments (%d) ≤ max segments (%d)", o.Name, o.MinSegments, o.MaxSegments)
	case o.MaxSegments > MaxBuffers/(o.SegmentSize/o.BufferSize): // divided: the product could overflow
		return fmt.Errorf("pool %q: %d segments of %d buffers exceed %d buffers", o.Name, o.MaxSegments, o.SegmentSize/o.BufferSize, MaxBuffers)
	case o.LowWatermark < 0 || o.IdleTimeout < 0:
		return fmt.Errorf("pool %q: negative watermark or idle timeout", o.Name)
	}
	return nil
}
