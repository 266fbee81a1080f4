/**
 * A service instance as its own process (`node --import tsx src/main.ts`) on a database the test
 * gives it: what a deployment runs once per machine. For the tests of several instances (and of
 * WEB_CONCURRENCY's workers) behaving as one service. Started by spawnService (service-process.ts);
 * this adds a free port and a graceful stop.
 */
import { freePort } from '../../src/free-port.js';
import { spawnService } from './service-process.js';

export interface Instance {
  url: string;
  /** Everything it printed so far. */
  output(): string;
  /** SIGTERM, then waits for it to exit (SIGKILL after 20 s: a hang guard only). */
  stop(): Promise<void>;
}

export async function startInstance(env: Record<string, string>): Promise<Instance> {
  const port = await freePort();
  const service = spawnService({ PORT: String(port), LOG_LEVEL: 'warn', ...env });
  const stop = async () => {
    if (service.child.exitCode === null && service.child.signalCode === null) {
      service.child.kill('SIGTERM');
      const guard = setTimeout(() => service.child.kill('SIGKILL'), 20_000);
      await service.exited;
      clearTimeout(guard);
    }
  };
  try {
    await service.listening;
  } catch (err) {
    await stop();
    throw err;
  }
  return { url: `http://127.0.0.1:${port}`, output: service.output, stop };
}
