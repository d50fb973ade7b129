package control_test

import (
	"errors"
	"testing"

	"github.com/skylane/skylane/control"
	"github.com/skylane/skylane/flow"
)

// FuzzDecodeRequest: any bytes decode without a panic, and what decodes is
// a request the session can act on without further checks.
func FuzzDecodeRequest(f *testing.F) {
	f.Add([]byte(`{"op":"open","name":"web","advisories":true}`))
	f.Add([]byte(`{"op":"register","kind":1,"key":{"l":"AAAAAAAAAAAAAAAAAAAAAA==","r":"AAAAAAAAAAAAAAAAAAAAAA==","lp":80,"v":4,"p":6}}`))
	f.Add([]byte(`{"op":"teardown","key":{"l":"","r":""}}`))
	f.Add([]byte(`{"op":"close"}`))
	f.Add([]byte(`{"op":"register-batch","kind":1,"keys":[{"l":"AAAAAAAAAAAAAAAAAAAAAA==","r":"AAAAAAAAAAAAAAAAAAAAAA==","lp":80,"rp":4000,"v":4,"p":6},{"l":"AAAAAAAAAAAAAAAAAAAAAA==","r":"AAAAAAAAAAAAAAAAAAAAAA==","lp":80,"rp":4001,"v":4,"p":6}]}`))
	f.Add([]byte(`{"op":"register-batch","kind":9,"keys":[]}`))
	f.Add([]byte(`{"op":"teardown-batch","keys":[{"l":"AAAAAAAAAAAAAAAAAAAAAA==","r":"AAAAAAAAAAAAAAAAAAAAAA=="},null]}`))
	f.Add([]byte(`{"op":"teardown-batch"}`))
	f.Add([]byte(`{"op":"open","name":""}`))
	f.Add([]byte(`{"op":"capture","capture":{"points":["drop","device-tx"],"apps":["web"],"proto":6,"host":"198.18.0.1","port":80,"reasons":["src_addr"],"snaplen":128,"slots":64}}`))
	f.Add([]byte(`{"op":"capture","capture":{"snaplen":-1}}`))
	f.Add([]byte(`{"op":"capture"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := control.DecodeRequest(b)
		if err != nil {
			if !errors.Is(err, control.ErrBadRequest) {
				t.Fatalf("error %v does not wrap ErrBadRequest", err)
			}
			return
		}
		switch r.Op {
		case control.OpOpen:
			if len(r.Name) == 0 || len(r.Name) > control.MaxNameLen {
				t.Fatalf("name %q accepted", r.Name)
			}
		case control.OpRegister, control.OpTeardown:
			if r.Key == nil || len(r.Key.Local) != 16 || len(r.Key.Remote) != 16 {
				t.Fatalf("key %+v accepted", r.Key)
			}
			if r.Op == control.OpRegister && (r.Kind < flow.Connected || r.Kind > flow.Listener2) {
				t.Fatalf("kind %d accepted", r.Kind)
			}
		case control.OpRegisterBatch, control.OpTeardownBatch:
			if len(r.Keys) == 0 || len(r.Keys) > control.MaxBatch {
				t.Fatalf("batch of %d keys accepted", len(r.Keys))
			}
			for _, k := range r.Keys {
				if k == nil || len(k.Local) != 16 || len(k.Remote) != 16 {
					t.Fatalf("batch key %+v accepted", k)
				}
			}
			if r.Op == control.OpRegisterBatch && (r.Kind < flow.Connected || r.Kind > flow.Listener2) {
				t.Fatalf("kind %d accepted", r.Kind)
			}
		case control.OpCapture:
			c := r.Capture
			if c == nil || c.Snaplen < 0 || c.Snaplen > 65535 || c.Slots < 0 || c.Slots > 1<<16 {
				t.Fatalf("capture %+v accepted", c)
			}
			for _, l := range [][]string{c.Points, c.Apps, c.Reasons} {
				for _, n := range l {
					if len(n) == 0 || len(n) > 64 || len(l) > 32 {
						t.Fatalf("capture list %q accepted", l)
					}
				}
			}
		case control.OpClose, control.OpStats:
		default:
			t.Fatalf("op %q accepted", r.Op)
		}
	})
}
