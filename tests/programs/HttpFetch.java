// A Java test client: fetch URL REQUESTS times with java.net.http.HttpClient on THREADS
// threads (its connects are non-blocking, driven by its selector thread) and print each
// distinct SHA-256 of the bodies with how many bodies had it, and each other status.
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.security.MessageDigest;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;

public class HttpFetch {
    public static void main(String[] args) throws Exception {
        URI uri = URI.create(args[0]);
        int threads = Integer.parseInt(args[1]);
        int requests = Integer.parseInt(args[2]);
        ExecutorService pool = Executors.newFixedThreadPool(threads);
        try {
            HttpClient client = HttpClient.newBuilder().version(HttpClient.Version.HTTP_1_1)
                .executor(pool).build();
            List<CompletableFuture<HttpResponse<byte[]>>> replies = new ArrayList<>();
            for (int i = 0; i < requests; i++) {
                replies.add(client.sendAsync(HttpRequest.newBuilder(uri).build(),
                                             HttpResponse.BodyHandlers.ofByteArray()));
            }
            Map<String, Integer> seen = new TreeMap<>();
            for (CompletableFuture<HttpResponse<byte[]>> reply : replies) {
                HttpResponse<byte[]> response = reply.join();
                String key = response.statusCode() == 200
                    ? HexFormat.of().formatHex(
                          MessageDigest.getInstance("SHA-256").digest(response.body()))
                    : "status " + response.statusCode();
                seen.merge(key, 1, Integer::sum);
            }
            seen.forEach((key, count) -> System.out.println(key + " " + count));
        } finally {
            pool.shutdownNow();
        }
    }
}
