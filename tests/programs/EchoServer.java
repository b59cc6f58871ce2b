// A Java test server: accept COUNT connections on [HOST]:PORT (HOST defaults to 127.0.0.1)
// with a non-blocking ServerSocketChannel and a Selector, on the JDK's dual-stack IPv6
// socket, and answer each connection's line with "echo:" + line.
import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.net.InetSocketAddress;
import java.nio.ByteBuffer;
import java.nio.channels.Channels;
import java.nio.channels.SelectionKey;
import java.nio.channels.Selector;
import java.nio.channels.ServerSocketChannel;
import java.nio.channels.SocketChannel;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;

public class EchoServer {
    public static void main(String[] args) throws Exception {
        String host = args.length > 2 ? args[2] : "127.0.0.1";
        int count = Integer.parseInt(args[1]);
        List<Thread> servers = new ArrayList<>();
        try (ServerSocketChannel listener = ServerSocketChannel.open();
             Selector selector = Selector.open()) {
            listener.bind(new InetSocketAddress(host, Integer.parseInt(args[0])));
            listener.configureBlocking(false);
            listener.register(selector, SelectionKey.OP_ACCEPT);
            System.out.println("listening");
            System.out.flush();
            while (servers.size() < count) {
                selector.select();
                selector.selectedKeys().clear();
                // A ready listener may still have nothing to accept (null): wait again.
                SocketChannel conn;
                while (servers.size() < count && (conn = listener.accept()) != null) {
                    SocketChannel accepted = conn;
                    Thread server = new Thread(() -> echo(accepted));
                    server.start();
                    servers.add(server);
                }
            }
        }
        for (Thread server : servers) {
            server.join();
        }
        System.out.println("served " + count);
    }

    static void echo(SocketChannel conn) {
        try (conn) {  // accepted channels block, whatever the listener does
            BufferedReader in = new BufferedReader(new InputStreamReader(
                Channels.newInputStream(conn), StandardCharsets.UTF_8));
            String line = in.readLine();
            if (line != null) {
                conn.write(ByteBuffer.wrap(("echo:" + line + "\n").getBytes(StandardCharsets.UTF_8)));
            }
        } catch (IOException error) {
            System.err.println("echo: " + error);
        }
    }
}
