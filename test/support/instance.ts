/**
 * A service instance as its own process (`node --import tsx src/main.ts`) on a database the test
 * gives it: what a deployment runs once per machine. For the tests of several instances (and of
 * WEB_CONCURRENCY's workers) behaving as one service.
 */
import { spawn } from 'node:child_process';
import { projectRoot } from '../../src/config.js';
import { freePort } from '../../src/free-port.js';

export interface Instance {
  url: string;
  /** Everything it printed so far. */
  output(): string;
  /** SIGTERM, then waits for it to exit (SIGKILL after 20 s: a hang guard only). */
  stop(): Promise<void>;
}

export async function startInstance(env: Record<string, string>): Promise<Instance> {
  const port = await freePort();
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts'], {
    cwd: projectRoot,
    env: { ...process.env, HOST: '127.0.0.1', PORT: String(port), SEED_WHEN_EMPTY: '0', WEB_CONCURRENCY: '1', LOG_LEVEL: 'warn', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const listening = new Promise<void>((resolve, reject) => {
    const onData = (chunk: Buffer) => {
      output += chunk.toString();
      // The banner, printed by main.ts once every process listens.
      if (/^API: +http/m.test(output)) resolve();
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    void exited.then(() => reject(new Error(`the instance exited before listening:\n${output.slice(-3000)}`)));
  });
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      const guard = setTimeout(() => child.kill('SIGKILL'), 20_000);
      await exited;
      clearTimeout(guard);
    }
  };
  try {
    await listening;
  } catch (err) {
    await stop();
    throw err;
  }
  return { url: `http://127.0.0.1:${port}`, output: () => output, stop };
}
