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
	f.Add([]byte(`{"op":"open","name":""}`))
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
		case control.OpClose:
		default:
			t.Fatalf("op %q accepted", r.Op)
		}
	})
}
