package main

// The receive path. gorilla/websocket dials (HTTP upgrade, accept-key check) and sends the first commands;
// then the socket is taken over: one epoll loop reads every viewer once per readiness edge and parses
// frames in place. Go's own netpoll would cost two read syscalls per frame (the second one EAGAIN) and
// a goroutine wake-up, which at 100,000 frames/s was as much CPU as Centrifugo spent sending them.

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
)

const (
	opContinuation = 0x0
	opText         = 0x1
	opBinary       = 0x2
	opClose        = 0x8
	opPing         = 0x9
	opPong         = 0xA
)

// upgradeConn hands gorilla the bytes up to the end of the HTTP response and keeps what follows
// (frames the server sent at once) for our parser.
type upgradeConn struct {
	net.Conn
	tail     uint32
	done     bool
	leftover []byte
}

func (c *upgradeConn) Read(p []byte) (int, error) {
	if c.done {
		return 0, io.EOF // frames are ours, never gorilla's
	}
	n, err := c.Conn.Read(p)
	for i := 0; i < n; i++ {
		if c.tail = c.tail<<8 | uint32(p[i]); c.tail == 0x0d0a0d0a {
			c.done, c.leftover = true, append([]byte(nil), p[i+1:n]...)
			return i + 1, err
		}
	}
	return n, err
}

// wire is a taken-over websocket: a non-blocking fd and the unparsed bytes read from it.
type wire struct {
	fd   int
	buf  []byte
	n    int
	frag []byte // a fragmented message being put together
	dead bool
}

// write sends one frame; the zero mask is valid (RFC 6455 asks clients to mask, not to mask unpredictably).
func (w *wire) write(op byte, p []byte) {
	frame := append([]byte{0x80 | op, 0x80 | byte(len(p)), 0, 0, 0, 0}, p...) // only short frames are written
	for {
		if _, err := syscall.Write(w.fd, frame); err != syscall.EINTR {
			return
		}
	}
}

// attach dials v, sends Centrifugo's connect + subscribe, takes the socket over and registers it with epoll.
func (r *run) attach(v *viewer, index int) error {
	var up *upgradeConn
	dialer := websocket.Dialer{HandshakeTimeout: 10 * time.Second,
		NetDialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			if err == nil {
				up = &upgradeConn{Conn: c}
				return up, nil
			}
			return nil, err
		}}
	path := "/connection/websocket"
	if r.cfg.target == "soma" {
		path = "/v1/session/" + r.sessions[v.session] + "/stream"
	}
	u := "ws" + strings.TrimPrefix(r.cfg.base, "http") + path
	conn, resp, err := dialer.Dial(u, nil)
	if err != nil {
		if resp != nil {
			return fmt.Errorf("dial %s: %w (HTTP %d)", u, err, resp.StatusCode)
		}
		return fmt.Errorf("dial %s: %w", u, err)
	}
	defer conn.Close() // our dup of the fd stays open
	if r.cfg.target == "centrifugo" {
		cmd := fmt.Sprintf(`{"id":1,"connect":{}}`+"\n"+`{"id":2,"subscribe":{"channel":%q}}`, r.sessions[v.session])
		if err := conn.WriteMessage(websocket.TextMessage, []byte(cmd)); err != nil {
			return err
		}
	}
	// a dup leaves Go's poller once the original closes, so only our epoll set sees its events
	raw, err := up.Conn.(*net.TCPConn).SyscallConn()
	if err != nil {
		return err
	}
	fd := -1
	if cerr := raw.Control(func(s uintptr) { fd, err = syscall.Dup(int(s)) }); cerr != nil || err != nil {
		return fmt.Errorf("dup: %v %v", cerr, err)
	}
	if err := syscall.SetNonblock(fd, true); err != nil {
		return err
	}
	v.mu.Lock()
	v.sock = wire{fd: fd, buf: make([]byte, 16384)}
	v.sock.n = copy(v.sock.buf, up.leftover)
	v.feed(time.Now().UnixNano())
	v.mu.Unlock()
	// syscall.EPOLLET is declared negative (-0x80000000): negated, it is the bit as a uint32
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP | -syscall.EPOLLET, Fd: int32(index)}
	return syscall.EpollCtl(r.epfd, syscall.EPOLL_CTL_ADD, fd, &ev)
}

// poll runs until the run stops, reading the viewers epoll reports ready.
func (r *run) poll() {
	defer r.readers.Done()
	events := make([]syscall.EpollEvent, 512)
	for !r.stopping.Load() {
		n, err := syscall.EpollWait(r.epfd, events, 50)
		if err != nil && err != syscall.EINTR {
			logf("epoll: %v", err)
			return
		}
		for _, ev := range events[:max(n, 0)] {
			v := r.viewers[ev.Fd]
			v.mu.Lock()
			v.drain()
			v.mu.Unlock()
		}
	}
}

// drain reads until a short read: the socket is then empty and its next data raises a new edge.
func (v *viewer) drain() {
	w := &v.sock
	for !w.dead {
		space := len(w.buf) - w.n
		n, err := syscall.Read(w.fd, w.buf[w.n:])
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
			return
		case err != nil:
			v.close(-1, err)
			return
		case n == 0:
			v.close(websocket.CloseAbnormalClosure, io.EOF)
			return
		}
		w.n += n
		v.feed(time.Now().UnixNano())
		if n < space {
			return
		}
	}
}

func (v *viewer) close(code int, err error) {
	if !v.sock.dead {
		v.sock.dead = true
		syscall.Close(v.sock.fd)
		v.ended(code, err)
	}
}

// feed handles the whole frames in the buffer (server frames are never masked) and keeps a partial one.
func (v *viewer) feed(now int64) {
	w := &v.sock
	b := w.buf[:w.n]
	for len(b) >= 2 && !w.dead {
		size, head := uint64(b[1]&0x7f), 2
		if size == 126 && len(b) >= 4 {
			size, head = uint64(binary.BigEndian.Uint16(b[2:])), 4
		} else if size == 127 && len(b) >= 10 {
			size, head = binary.BigEndian.Uint64(b[2:]), 10
		} else if size >= 126 {
			break
		}
		if uint64(len(b)) < uint64(head)+size {
			if need := head + int(size); need > len(w.buf) {
				w.buf = append(make([]byte, 0, need+16384), b...)[:need+16384]
				w.n = len(b)
				return
			}
			break
		}
		fin, op := b[0]&0x80 != 0, b[0]&0x0f
		p := b[head : head+int(size)]
		b = b[head+int(size):]
		v.frame(op, fin, p, now)
	}
	w.n = copy(w.buf, b)
}

func (v *viewer) frame(op byte, fin bool, p []byte, now int64) {
	w := &v.sock
	switch op {
	case opText, opBinary:
		if fin {
			v.message(p, now)
		} else {
			w.frag = append(w.frag[:0], p...)
		}
	case opContinuation:
		if w.frag = append(w.frag, p...); fin {
			v.message(w.frag, now)
		}
	case opPing:
		w.write(opPong, p)
	case opClose:
		code := 1005 // RFC 6455: no status code present
		if len(p) >= 2 {
			code = int(binary.BigEndian.Uint16(p))
		}
		v.close(code, fmt.Errorf("closed by the server: %d %q", code, p[min(len(p), 2):]))
	}
}
