// A static Go test server (CGO_ENABLED=0): accept COUNT connections on [HOST]:PORT
// (HOST defaults to 127.0.0.1),
// answer each line with "echo:" + line.
package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
)

func main() {
	host := "127.0.0.1"
	if len(os.Args) > 3 {
		host = os.Args[3] // the acceptance tests listen on the facility's address
	}
	listener, err := net.Listen("tcp", net.JoinHostPort(host, os.Args[1]))
	if err != nil {
		fmt.Println("listen:", err)
		os.Exit(1)
	}
	fmt.Println("listening")
	count, _ := strconv.Atoi(os.Args[2])
	var group sync.WaitGroup
	for i := 0; i < count; i++ {
		conn, err := listener.Accept()
		if err != nil {
			fmt.Println("accept:", err)
			os.Exit(1)
		}
		group.Add(1)
		go func(conn net.Conn) {
			defer group.Done()
			defer conn.Close()
			line, _ := bufio.NewReader(conn).ReadString('\n')
			conn.Write([]byte("echo:" + line))
		}(conn)
	}
	group.Wait()
	fmt.Printf("served %d\n", count)
}
