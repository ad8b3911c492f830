// goget: seed 004's load test, with keep-alive. N goroutines each GET in a loop (http.DefaultClient,
// what http.Get uses, with an httptrace attached) against a
// `ringhold serve --protocol http` server (or any server of the http-kit handler: GET ?length=N
// answers 200 with N bytes of one fixed text), and check every answer: status 200, Content-Length
// and body length equal to the length asked for, the body equal to the start of the server's text.
//
// The blog's client used http.Get with the default transport, which keeps only 2 idle connections per
// host: every other request opened a new connection and left one in TIME_WAIT, and the run died of
// EADDRNOTAVAIL and resets. Here the default transport keeps one idle connection per goroutine
// (MaxIdleConnsPerHost = MaxConnsPerHost = N), so the N goroutines hold N keep-alive connections.
// httptrace counts how many requests got a new connection and how many reused one; the dialer counts
// the connections opened ("dials"; the transport may dial one a request then does not wait for),
// the dials that failed ("dial_errors": a request that got an idle connection first and completed
// cancels its own dial, Client.Timeout's context, even when the server had accepted it already;
// such an error reaches no request) and how many connections the client closed before the end
// ("early_closes": a connection the server closed is closed by the client too).
//
// Prints one JSON object on stdout: {"ok":…, "errors":…, "bad":…, "dials":…, "dial_errors":…,
// "early_closes":…, "new_conns":…, "reused":…, "first_problem":"…", "seconds":…}. Exits 1 if
// anything went wrong, 2 on bad usage. Bounded: every request has -timeout, the whole run
// -deadline. Standard library only.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

type summary struct {
	OK           int64   `json:"ok"`
	Errors       int64   `json:"errors"`
	Bad          int64   `json:"bad"`
	Dials        int64   `json:"dials"`
	DialErrors   int64   `json:"dial_errors"`
	EarlyCloses  int64   `json:"early_closes"`
	NewConns     int64   `json:"new_conns"`
	Reused       int64   `json:"reused"`
	FirstProblem string  `json:"first_problem"`
	Seconds      float64 `json:"seconds"`
}

func main() {
	url := flag.String("url", "", "base URL, e.g. http://127.0.0.1:7000/")
	goroutines := flag.Int("goroutines", 1000, "concurrent goroutines (one keep-alive connection each)")
	requests := flag.Int("requests", 10, "requests per goroutine")
	maxLen := flag.Int("max-length", 4096, "each request asks for ?length= drawn from 1..max-length")
	timeout := flag.Duration("timeout", 30*time.Second, "per request")
	deadline := flag.Duration("deadline", 120*time.Second, "whole run")
	flag.Parse()
	if *url == "" || *goroutines < 1 || *requests < 1 || *maxLen < 1 {
		flag.Usage()
		os.Exit(2)
	}

	t := http.DefaultTransport.(*http.Transport)
	t.MaxIdleConns = *goroutines
	t.MaxIdleConnsPerHost = *goroutines
	t.MaxConnsPerHost = *goroutines
	t.DisableCompression = true
	var s summary
	dialer := &net.Dialer{Timeout: *timeout, KeepAlive: 30 * time.Second}
	t.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dialer.DialContext(ctx, network, addr)
		if err != nil {
			atomic.AddInt64(&s.DialErrors, 1)
			return nil, err
		}
		atomic.AddInt64(&s.Dials, 1)
		return &countedConn{Conn: c, closes: &s.EarlyCloses}, nil
	}
	http.DefaultClient.Timeout = *timeout

	var problemOnce sync.Once
	problem := func(format string, a ...interface{}) {
		problemOnce.Do(func() { s.FirstProblem = fmt.Sprintf(format, a...) })
	}
	trace := &httptrace.ClientTrace{
		GotConn: func(info httptrace.GotConnInfo) {
			if info.Reused {
				atomic.AddInt64(&s.Reused, 1)
			} else {
				atomic.AddInt64(&s.NewConns, 1)
			}
		},
	}

	// The reference text: the longest body, asked for once.
	ref, err := get(*url, *maxLen, nil)
	if err != nil {
		fmt.Fprintf(os.Stderr, "goget: reference GET: %v\n", err)
		os.Exit(1)
	}

	start := time.Now()
	stop := start.Add(*deadline)
	var wg sync.WaitGroup
	for g := 0; g < *goroutines; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			rng := rand.New(rand.NewSource(int64(g) + 1))
			for i := 0; i < *requests && time.Now().Before(stop); i++ {
				n := 1 + rng.Intn(*maxLen)
				body, err := get(*url, n, trace)
				switch {
				case err != nil:
					atomic.AddInt64(&s.Errors, 1)
					problem("goroutine %d request %d: %v", g, i, err)
				case len(body) != n || string(body) != string(ref[:n]):
					atomic.AddInt64(&s.Bad, 1)
					problem("goroutine %d request %d: asked for %d bytes, got %d (or different ones)", g, i, n, len(body))
				default:
					atomic.AddInt64(&s.OK, 1)
				}
			}
		}(g)
	}
	wg.Wait()
	s.Seconds = time.Since(start).Seconds()
	s.EarlyCloses = atomic.LoadInt64(&s.EarlyCloses)
	want := int64(*goroutines) * int64(*requests)
	if s.OK != want && s.FirstProblem == "" {
		s.FirstProblem = fmt.Sprintf("only %d of %d requests done within -deadline %v", s.OK, want, *deadline)
	}
	out, _ := json.Marshal(s)
	fmt.Println(string(out))
	if s.OK != want {
		os.Exit(1)
	}
}

// get asks for ?length=n through http.DefaultClient (http.Get itself when no trace is given) and
// returns the body after checking the status and Content-Length.
func get(base string, n int, trace *httptrace.ClientTrace) ([]byte, error) {
	u := base + "?length=" + strconv.Itoa(n)
	var res *http.Response
	var err error
	if trace == nil {
		res, err = http.Get(u)
	} else {
		req, rerr := http.NewRequest(http.MethodGet, u, nil)
		if rerr != nil {
			return nil, rerr
		}
		req = req.WithContext(httptrace.WithClientTrace(req.Context(), trace))
		res, err = http.DefaultClient.Do(req)
	}
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		return nil, err
	}
	if res.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status %d", res.StatusCode)
	}
	if res.ContentLength != int64(n) {
		return nil, fmt.Errorf("Content-Length %d for ?length=%d", res.ContentLength, n)
	}
	return body, nil
}

// countedConn counts its first Close.
type countedConn struct {
	net.Conn
	closes *int64
	once   sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(func() { atomic.AddInt64(c.closes, 1) })
	return c.Conn.Close()
}
