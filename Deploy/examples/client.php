<?php
/*
 * A jobgate client in plain PHP (fsockopen, no extensions): copy the JobgateClient class into your project.
 *
 * The protocol (Sources/GatewayProtocol/PROTOCOL.md) in brief: you send one-line requests, the gateway answers
 * each with one line, in order. A line ending in a byte count is followed by exactly that many raw bytes and a
 * line break (a "data block"), so payloads and results may contain any bytes. After WATCH the gateway also pushes
 * "EVENT ..." lines; they can arrive before the reply of a later request, so readReply() keeps them aside.
 *
 * Demo:
 *   php client.php HOST PORT [--auth SECRET] [--tls-ca FILE] submit FUNCTION PAYLOAD [WAIT_MS]   submit, watch, then wait
 *   php client.php HOST PORT [--auth SECRET] [--tls-ca FILE] wait ID WAIT_MS
 *   php client.php HOST PORT [--auth SECRET] [--tls-ca FILE] subscribe FUNCTION [FROM] [COUNT]   every job of FUNCTION
 *       that ends after cursor FROM (now, start, or a cursor printed before), as `<cursor> <id> <kind> <hex>` lines
 * --tls-ca (or JOBGATE_TLS_CA) speaks TLS to a gateway serving it, trusting the authorities in FILE; JOBGATE_TLS=1
 * alone trusts the system's. --tls-cert FILE --tls-key FILE add a client certificate (mutual TLS).
 * PAYLOAD is text, or hex:<digits> for binary. Results and failure reasons print as hex so any bytes print
 * safely. Exit status: 0 done, 1 failed/expired/timed out, 2 an ERR reply or a broken connection.
 */

/** An `ERR <CODE> <text>` reply (code e.g. NOT_FOUND, DENIED, NOAUTH), or code PROTOCOL for a broken reply. */
class JobgateException extends Exception {
    public $errorCode;
    public function __construct($code, $text) {
        parent::__construct("$code $text");
        $this->errorCode = $code;
    }
}

class JobgateClient {
    private $socket;
    private $events = [];  // events that arrived while we waited for a reply

    /** $tls: null for plain TCP, or PHP's `ssl` context options (e.g. ['cafile' => ...]); the gateway's certificate
     *  is checked against $host, a name or an IP address. */
    public function __construct($host, $port, $timeout = 30, $tls = null) {
        if ($tls === null) {
            $this->socket = @fsockopen($host, $port, $errno, $errstr, 10);
        } else {
            $context = stream_context_create(['ssl' => $tls + ['verify_peer' => true, 'verify_peer_name' => true, 'peer_name' => $host]]);
            $address = strpos($host, ':') === false ? $host : "[$host]";
            $this->socket = @stream_socket_client("tls://$address:$port", $errno, $errstr, 10, STREAM_CLIENT_CONNECT, $context);
            if (!$this->socket) $errstr = $errstr ?: (error_get_last()['message'] ?? 'TLS handshake failed');
        }
        if (!$this->socket) throw new JobgateException('PROTOCOL', "cannot connect: $errstr");
        stream_set_timeout($this->socket, (int)$timeout);  // no read blocks forever
    }

    public function close() { fclose($this->socket); }

    // -- reading ------------------------------------------------------------------------------------------

    private function line() {
        $line = fgets($this->socket);  // up to and including the LF, however long
        if ($line === false || substr($line, -1) !== "\n") throw new JobgateException('PROTOCOL', 'connection closed or timed out');
        $words = preg_split('/ +/', trim($line, "\r\n"), -1, PREG_SPLIT_NO_EMPTY);
        if ($words && $words[0][0] === '@') array_shift($words);  // a tag (only if you tag requests to pipeline them)
        return $words;
    }

    /** Reads a data block: exactly $count raw bytes (fread may return fewer, so loop), then the line break. */
    private function block($count) {
        $data = '';
        while (strlen($data) < $count) {
            $chunk = fread($this->socket, $count - strlen($data));
            if ($chunk === false || $chunk === '') throw new JobgateException('PROTOCOL', 'truncated data block');
            $data .= $chunk;
        }
        if (!in_array(fgets($this->socket), ["\r\n", "\n"], true)) throw new JobgateException('PROTOCOL', 'no line break after a block');
        return $data;
    }

    /** One reply or event as [words, data]; data is the block's bytes, or null if the line has none. */
    private function message() {
        $words = $this->line();
        $isEvent = ($words[0] ?? '') === 'EVENT';
        $kind = $isEvent ? ($words[2] ?? '') : ($words[0] ?? '');
        // Where the byte count is: options such as cursor= may follow it.
        $countAt = ($isEvent ? ['PROGRESS' => 5, 'DONE' => 3, 'FAILED' => 3] : ['DONE' => 2, 'FAILED' => 2, 'STATS' => 1])[$kind] ?? null;
        return [$words, $countAt !== null ? $this->block((int)$words[$countAt]) : null];
    }

    /** The next reply, keeping pushed events for nextEvent(); throws JobgateException on ERR. */
    public function readReply() {
        while (true) {
            [$words, $data] = $this->message();
            if ($words[0] === 'EVENT') $this->events[] = [$words, $data];
            elseif ($words[0] === 'ERR') throw new JobgateException($words[1], implode(' ', array_slice($words, 2)));
            else return [$words, $data];
        }
    }

    /** The next pushed event as [id, kind, words after the kind, data], e.g. kind PROGRESS or DONE. */
    public function nextEvent() {
        [$words, $data] = $this->events ? array_shift($this->events) : $this->message();
        if ($words[0] !== 'EVENT') throw new JobgateException('PROTOCOL', 'expected an event, got ' . implode(' ', $words));
        return [$words[1], $words[2], array_slice($words, 3), $data];
    }

    // -- commands -----------------------------------------------------------------------------------------

    public function request($line, $data = null) {
        $out = "$line\r\n" . ($data !== null ? "$data\r\n" : '');
        for ($sent = 0; $sent < strlen($out); $sent += $n) {  // fwrite may write only part
            $n = fwrite($this->socket, substr($out, $sent));
            if (!$n) throw new JobgateException('PROTOCOL', 'write failed');
        }
        return $this->readReply();
    }

    public function auth($secret) { $this->request("AUTH $secret"); }

    /** Queues a job; returns its id. The byte count goes on the line, the raw payload right after it. */
    public function submit($function, $payload) {
        [$words] = $this->request("SUBMIT $function " . strlen($payload), $payload);
        return $words[1];  // CREATED <id>, or EXISTS <id> for a unique key already queued
    }

    /** Starts pushing events for the job; returns [state, numerator, denominator] right now. */
    public function watch($id) {
        [$words] = $this->request("WATCH $id");
        return [$words[2], (int)$words[3], (int)$words[4]];
    }

    /** Pushes the end of every job of $function that ended after $since (a cursor from nextEnded(), 'start' for all
     *  the gateway's log holds, or 'now'), then of every job that ends from now on, each once. */
    public function subscribe($function, $since = 'now') {
        $this->request("SUBSCRIBE $function from=$since");
    }

    /** The next ended job of a subscription as [cursor, id, kind, data]: kind DONE, FAILED or EXPIRED. Keep the cursor
     *  of the last one you handled: subscribe($function, $cursor) resumes right after it, on any gateway. */
    public function nextEnded() {
        [$id, $kind, $words, $data] = $this->nextEvent();
        $cursor = null;
        foreach ($words as $word) if (strncmp($word, 'cursor=', 7) === 0) $cursor = substr($word, 7);
        return [$cursor, $id, $kind, $data];
    }

    /** Blocks until the job ends: ['DONE', result], ['FAILED', reason], ['EXPIRED', null], or ['TIMEOUT', null]
     *  when $timeoutMs passes first. The stream timeout must exceed $timeoutMs. */
    public function wait($id, $timeoutMs) {
        [$words, $data] = $this->request("WAIT $id $timeoutMs");
        return [$words[0], $data];
    }
}

function main($args) {
    $secret = null;
    if (($i = array_search('--auth', $args, true)) !== false) {
        $secret = $args[$i + 1];
        array_splice($args, $i, 2);
    }
    $options = [];
    foreach (['--tls-ca', '--tls-cert', '--tls-key'] as $name) {
        if (($i = array_search($name, $args, true)) !== false) {
            $options[$name] = $args[$i + 1];
            array_splice($args, $i, 2);
        }
    }
    $ca = $options['--tls-ca'] ?? (getenv('JOBGATE_TLS_CA') ?: null);
    $tls = null;
    if ($ca !== null || getenv('JOBGATE_TLS') === '1') {
        $tls = $ca !== null ? ['cafile' => $ca] : [];
        if (isset($options['--tls-cert'])) $tls += ['local_cert' => $options['--tls-cert'], 'local_pk' => $options['--tls-key'] ?? null];
    }
    [$host, $port, $command] = $args;
    $rest = array_slice($args, 3);
    $waitMs = (int)($command === 'submit' ? ($rest[2] ?? 5000) : ($command === 'subscribe' ? 3600 * 1000 : $rest[1]));
    $client = null;
    try {
        $client = new JobgateClient($host, (int)$port, $waitMs / 1000 + 30, $tls);
        if ($secret !== null) $client->auth($secret);
        if ($command === 'subscribe') {
            $client->subscribe($rest[0], $rest[1] ?? 'now');
            echo "SUBSCRIBED $rest[0]\n";
            for ($n = 0; !isset($rest[2]) || $n < (int)$rest[2]; $n++) {
                [$cursor, $id, $kind, $data] = $client->nextEnded();
                echo "$cursor $id $kind " . bin2hex($data ?? '') . "\n";
            }
            return 0;
        }
        if ($command === 'submit') {
            $payload = strncmp($rest[1], 'hex:', 4) === 0 ? hex2bin(substr($rest[1], 4)) : $rest[1];
            $id = $client->submit($rest[0], $payload);
            echo "CREATED $id\n";
            echo "WATCHING $id " . implode(' ', $client->watch($id)) . "\n";
            while (true) {  // events until the terminal one (DONE, FAILED or EXPIRED)
                [, $kind, $words, $data] = $client->nextEvent();
                if ($kind === 'PROGRESS') { echo "PROGRESS $words[0] $words[1] $data\n"; continue; }
                echo "$kind " . bin2hex($data ?? '') . "\n";
                break;
            }
        } else {
            $id = $rest[0];
        }
        [$outcome, $data] = $client->wait($id, $waitMs);  // after a watch it answers at once: the job has ended
        echo "WAIT $outcome " . bin2hex($data ?? '') . "\n";
        return $outcome === 'DONE' ? 0 : 1;
    } catch (JobgateException $error) {
        fwrite(STDERR, "error: " . $error->getMessage() . "\n");
        return 2;
    } finally {
        if ($client) $client->close();
    }
}

exit(main(array_slice($argv, 1)));
