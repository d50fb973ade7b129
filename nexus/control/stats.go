package control

import (
	"cmp"
	"encoding/json"
	"fmt"
	"net"
	"slices"
	"time"

	"github.com/skylane/skylane/control"
	"github.com/skylane/skylane/flowswitch"
	"github.com/skylane/skylane/internal/shm"
	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/pool"
)

// MaxStatsReply bounds a stats reply: one SOCK_SEQPACKET message, which
// the kernel's socket send buffer must hold whole (its default cap,
// net.core.wmem_max, is 208 KiB; setting SO_SNDBUF doubles what is asked).
// Ports past it are left out and Stats.Truncated says so.
const MaxStatsReply = 192 << 10

// Stats are a nexus's counters as `skylane stats --nexus` shows them: the
// switch's, and each app session's with who it is.
type Stats struct {
	Time    time.Time                 `json:"time"`
	Addrs   []string                  `json:"addrs"`
	Totals  flowswitch.SnapshotTotals `json:"totals"`
	Link    netif.Stats               `json:"link"`
	Drops   []flowswitch.Drop         `json:"drops"`   // reasons with packets dropped, in check order
	Refused uint64                    `json:"refused"` // requests the policy refused, all sessions
	// L2 is next-hop resolution's counters and, when the nexus follows
	// the kernel's tables, the routes and next hops in use; nil without
	// resolution (TUN, memif, a static --peer-mac).
	L2        *flowswitch.SnapshotL2 `json:"l2,omitempty"`
	Sessions  []SessionStats         `json:"sessions"`
	Truncated bool                   `json:"truncated,omitempty"` // sessions left out: see MaxStatsReply
}

// SessionStats are one app session's: who it is and its port's counters
// (zero for a session without a port, such as a stats reader's).
type SessionStats struct {
	Session     uint64     `json:"session"`
	App         string     `json:"app"`     // the name it opened its port with
	Channel     string     `json:"channel"` // its port's channel
	UID         uint32     `json:"uid"`
	GID         uint32     `json:"gid"`
	PID         int32      `json:"pid"`
	Rule        string     `json:"rule"` // the policy rule governing it
	Since       time.Time  `json:"since"`
	Flows       int        `json:"flows"`
	Refused     uint64     `json:"refused"`
	Delivered   uint64     `json:"rx_delivered"`
	RxRingDrops uint64     `json:"rx_ring_drops"`
	TxPackets   uint64     `json:"tx_packets"`
	TxBytes     uint64     `json:"tx_bytes"`
	TxDrops     uint64     `json:"tx_drops"`           // packets the transmit checks refused
	Rate        int64      `json:"rate_bps,omitempty"` // its transmit cap (the policy's rate), 0 for none
	Pool        pool.Stats `json:"pool"`
	PoolInUse   int        `json:"pool_in_use"` // buffers out of the pool
	PoolMax     int64      `json:"pool_max"`    // bytes the pool may grow to (max_pool)
	Defunct     bool       `json:"defunct,omitempty"`
}

// statsReply is the reply to OpStats: a control.Reply, with the stats
// when OK.
type statsReply struct {
	control.Reply
	Stats *Stats `json:"stats,omitempty"`
}

// stats answers OpStats; false if the app did not take the answer.
func (ss *session) stats() bool {
	g, err := ss.grant()
	if err == nil {
		err = g.Observe()
	}
	if err != nil {
		return reply(ss.c, ss.refuse("stats", err))
	}
	st, err := ss.s.Stats()
	if err != nil {
		return reply(ss.c, control.Failure(err))
	}
	b, err := marshalStats(st)
	if err != nil {
		return reply(ss.c, control.Failure(err))
	}
	ss.c.SetWriteBuffer(MaxStatsReply)
	return send(ss.c, b)
}

// marshalStats encodes st as a reply of at most MaxStatsReply bytes,
// leaving sessions out if it must.
func marshalStats(st Stats) ([]byte, error) {
	for {
		b, err := json.Marshal(statsReply{Reply: control.Reply{OK: true}, Stats: &st})
		if err != nil || len(b) <= MaxStatsReply {
			return b, err
		}
		if len(st.Sessions) == 0 {
			return nil, fmt.Errorf("stats: %d bytes without sessions, at most %d", len(b), MaxStatsReply)
		}
		st.Sessions = st.Sessions[:len(st.Sessions)/2]
		st.Truncated = true
	}
}

// Stats returns the nexus's counters and its sessions'.
func (s *Server) Stats() (Stats, error) {
	snap, err := s.n.Snapshot()
	if err != nil {
		return Stats{}, err
	}
	nst, err := s.n.Stats()
	if err != nil {
		return Stats{}, err
	}
	st := Stats{Time: time.Now(), Totals: snap.Totals, Link: nst.Link, Refused: s.refused.Load(), L2: snap.L2}
	for _, a := range s.n.Addrs() {
		st.Addrs = append(st.Addrs, a.String())
	}
	for _, d := range snap.Drops {
		if d.Packets > 0 {
			st.Drops = append(st.Drops, d)
		}
	}
	ports := make(map[string]flowswitch.PortStats, len(snap.Ports))
	for _, p := range snap.Ports {
		ports[p.Channel] = p
	}
	pools := make(map[string]int, len(nst.Ports))
	for i, p := range nst.Ports {
		pools[p.Name] = i
	}
	for _, ss := range s.sessionList() {
		ss.mu.Lock()
		x := SessionStats{Session: ss.id, App: ss.name, UID: ss.cred.UID, GID: ss.cred.GID, PID: ss.cred.PID,
			Since: ss.started, Flows: len(ss.flows), Refused: ss.refused, Rule: "none"}
		if ss.g != nil {
			x.Rule = ss.g.Describe()
		}
		if ss.port != nil {
			x.Channel = ss.port.Name()
		}
		ss.mu.Unlock()
		if p, ok := ports[x.Channel]; ok && x.Channel != "" {
			x.Delivered, x.RxRingDrops, x.TxPackets, x.TxBytes, x.TxDrops = p.Delivered, p.RxRingDrops, p.TxPackets, p.TxBytes, p.TxDrops
			if p.Regulation != nil {
				x.Rate = p.Regulation.Rate
			}
		}
		if i, ok := pools[x.Channel]; ok && x.Channel != "" {
			x.Pool, x.PoolInUse, x.PoolMax, x.Defunct = nst.Ports[i].Pool, nst.Ports[i].InUse, nst.Ports[i].MaxPool, nst.Ports[i].Defunct
		}
		st.Sessions = append(st.Sessions, x)
	}
	slices.SortFunc(st.Sessions, func(a, b SessionStats) int { return cmp.Compare(a.Session, b.Session) })
	return st, nil
}

// FetchStats asks the nexus serving the control socket at path for its
// counters. The caller's credentials must be allowed to observe.
func FetchStats(path string) (Stats, error) {
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return Stats{}, fmt.Errorf("stats: dial %s (is a nexus serving its control socket there?): %w", path, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(replyTimeout))
	if _, err := c.Write([]byte(`{"op":"stats"}`)); err != nil {
		return Stats{}, fmt.Errorf("stats: send: %w", err)
	}
	buf := make([]byte, MaxStatsReply+1)
	k, _, flags, _, err := c.ReadMsgUnix(buf, nil)
	if err != nil {
		return Stats{}, fmt.Errorf("stats: reply: %w", err)
	}
	if k == 0 || shm.Truncated(flags) {
		return Stats{}, fmt.Errorf("stats: reply empty or longer than %d bytes", MaxStatsReply)
	}
	var rep statsReply
	if err := json.Unmarshal(buf[:k], &rep); err != nil {
		return Stats{}, fmt.Errorf("stats: reply: %w", err)
	}
	if !rep.OK || rep.Stats == nil {
		return Stats{}, fmt.Errorf("stats: %w", &control.RemoteError{Msg: rep.Error, Code: rep.Code})
	}
	c.Write([]byte(`{"op":"close"}`))
	return *rep.Stats, nil
}
