// A Java test client: resolve HOST with the JDK (getaddrinfo), connect to HOST:PORT with a
// timeout (a non-blocking connect and a poll inside the JDK), send a line, print the reply.
import java.io.IOException;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.nio.charset.StandardCharsets;

public class EchoClient {
    public static void main(String[] args) {
        try (Socket conn = new Socket()) {
            conn.connect(new InetSocketAddress(args[0], Integer.parseInt(args[1])), 20000);
            conn.getOutputStream().write("hello java\n".getBytes(StandardCharsets.UTF_8));
            conn.shutdownOutput();
            System.out.print(new String(conn.getInputStream().readAllBytes(),
                                        StandardCharsets.UTF_8));
        } catch (IOException error) {
            System.out.println("connect: " + error);
            System.exit(1);
        }
    }
}
