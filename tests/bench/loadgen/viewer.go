package main

import (
	"bytes"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

type sample struct{ at, latency int64 } // receive time (unix ns), send-to-receive (ns)

// viewer is one websocket subscriber. After its setup only a poller touches it, under mu.
type viewer struct {
	run       *run
	session   int
	mu        sync.Mutex
	sock      wire
	ready     chan struct{}
	readyOnce sync.Once
	setupErr  error
	last      int64 // last seq (soma) or offset / message index (centrifugo) seen
	hasLast   bool
	samples   []sample
	gaps      int64
	missing   int64
	dups      int64
	other     int64 // ordered frames that are not ours (e.g. agent replies in a soma session)
	closeCode int   // 0 while open or when we closed it ourselves
}

func (v *viewer) markReady(err error) {
	v.readyOnce.Do(func() { v.setupErr = err; close(v.ready) })
}

// ended records a connection the server closed (or lost) while the run was still going.
func (v *viewer) ended(code int, err error) {
	if !v.run.stopping.Load() {
		v.closeCode = code
		v.run.closed.Add(1)
		v.markReady(fmt.Errorf("connection ended before ready: %w", err))
	}
}

// message handles one whole text message; Centrifugo may pack several replies in it, one per line.
func (v *viewer) message(p []byte, now int64) {
	if v.run.cfg.target == "soma" {
		v.soma(p, now)
		return
	}
	for len(p) > 0 {
		line := p
		if i := bytes.IndexByte(p, '\n'); i >= 0 {
			line, p = p[:i], p[i+1:]
		} else {
			p = nil
		}
		if len(line) > 0 {
			v.centrifugo(line, now)
		}
	}
}

// order checks that position pos follows the last one by step; it returns false for a duplicate.
func (v *viewer) order(pos, step int64) bool {
	if v.hasLast {
		switch {
		case pos <= v.last:
			v.dups++
			return false
		case pos > v.last+step:
			v.gaps++
			v.missing += (pos-v.last)/step - 1
		}
	}
	v.last, v.hasLast = pos, true
	return true
}

// deliver records one of our messages (already found in order) received at now.
func (v *viewer) deliver(text []byte, now int64) {
	index, sentAt, ok := parseText(text)
	if !ok {
		v.other++
		return
	}
	r := v.run
	if index < int64(r.cfg.warmup) {
		r.warmed.Add(1)
		return
	}
	v.samples = append(v.samples, sample{now, now - sentAt})
	r.delivered.Add(1)
}

func (v *viewer) soma(frame []byte, now int64) {
	var seqRaw, msgRaw, typeRaw, headRaw []byte
	fields(frame, func(k, val []byte) {
		switch string(k) {
		case "seq":
			seqRaw = val
		case "message":
			msgRaw = val
		case "type":
			typeRaw = val
		case "head_seq":
			headRaw = val
		}
	})
	if seq, ok := parseInt(seqRaw); ok {
		if !v.order(seq, 1) {
			return
		}
		if text, ok := stringBody(msgRaw); ok {
			v.deliver(text, now)
		} else {
			v.other++
		}
		return
	}
	if string(typeRaw) == `"recovered"` {
		// live events continue from the head the server recovered us to
		if head, ok := parseInt(headRaw); ok && (!v.hasLast || head > v.last) {
			v.last, v.hasLast = head, true
		}
		v.markReady(nil)
	}
}

func (v *viewer) centrifugo(line []byte, now int64) {
	var idRaw, pushRaw, subRaw, errRaw []byte
	fields(line, func(k, val []byte) {
		switch string(k) {
		case "id":
			idRaw = val
		case "push":
			pushRaw = val
		case "subscribe":
			subRaw = val
		case "error":
			errRaw = val
		}
	})
	if idRaw == nil && pushRaw == nil && errRaw == nil && subRaw == nil {
		// an empty object is the server's ping in the JSON protocol: answer with an empty command
		v.sock.write(opText, []byte("{}"))
		return
	}
	if idRaw != nil {
		if errRaw != nil {
			v.markReady(fmt.Errorf("centrifugo reply %s: %s", idRaw, errRaw))
		} else if string(idRaw) == "2" {
			var offRaw []byte
			fields(subRaw, func(k, val []byte) {
				if string(k) == "offset" {
					offRaw = val
				}
			})
			if off, ok := parseInt(offRaw); ok {
				v.last, v.hasLast = off, true
			}
			v.markReady(nil)
		}
		return
	}
	var pubRaw, dataRaw, offRaw, msgRaw []byte
	fields(pushRaw, func(k, val []byte) {
		if string(k) == "pub" {
			pubRaw = val
		}
	})
	if pubRaw == nil {
		return // join/leave/disconnect pushes carry no publication
	}
	fields(pubRaw, func(k, val []byte) {
		switch string(k) {
		case "data":
			dataRaw = val
		case "offset":
			offRaw = val
		}
	})
	fields(dataRaw, func(k, val []byte) {
		if string(k) == "message" {
			msgRaw = val
		}
	})
	text, ok := stringBody(msgRaw)
	if off, hasOff := parseInt(offRaw); hasOff {
		if !v.order(off, 1) {
			return
		}
	} else if ok {
		// without history there is no offset: the embedded index steps by the session count per channel
		if index, _, ok := parseText(text); ok && !v.order(index, int64(len(v.run.sessions))) {
			return
		}
	}
	if ok {
		v.deliver(text, now)
	} else {
		v.other++
	}
}

// connectAll dials every viewer (a bounded number at once), then waits until all are ready.
func (r *run) connectAll(timeout time.Duration) error {
	sem := make(chan struct{}, 32)
	var wg sync.WaitGroup
	var failed atomic.Pointer[error]
	for i, v := range r.viewers {
		if failed.Load() != nil {
			break
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			if err := r.attach(v, i); err != nil {
				failed.CompareAndSwap(nil, &err)
				v.markReady(err)
			}
		}()
	}
	wg.Wait()
	if p := failed.Load(); p != nil {
		return *p
	}
	deadline := time.After(timeout)
	for i, v := range r.viewers {
		select {
		case <-v.ready:
			if v.setupErr != nil {
				return fmt.Errorf("viewer %d: %w", i, v.setupErr)
			}
		case <-deadline:
			return fmt.Errorf("viewer %d not ready within %s", i, timeout)
		}
	}
	return nil
}
