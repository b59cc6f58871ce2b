// A static Go test client (CGO_ENABLED=0): dial HOST:PORT with Go's own resolver,
// send a line, print the reply.
package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"time"
)

func main() {
	conn, err := net.DialTimeout("tcp", net.JoinHostPort(os.Args[1], os.Args[2]), 20*time.Second)
	if err != nil {
		fmt.Println("dial:", err)
		os.Exit(1)
	}
	conn.Write([]byte("hello go\n"))
	conn.(*net.TCPConn).CloseWrite()
	reply, _ := io.ReadAll(conn)
	fmt.Print(string(reply))
}
