// Prints, for each key read from stdin (one per line), the partition Kafka's Java
// producer assigns it by default: toPositive(murmur2(key)) % partitions.
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import org.apache.kafka.common.utils.Utils;

public class Murmur2Partitions {
    public static void main(String[] args) throws Exception {
        int partitions = Integer.parseInt(args[0]);
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        StringBuilder out = new StringBuilder();
        for (String line; (line = in.readLine()) != null; ) {
            byte[] key = line.getBytes(StandardCharsets.UTF_8);
            out.append(Utils.toPositive(Utils.murmur2(key)) % partitions).append('\n');
        }
        System.out.print(out);
    }
}
