/**
 * An older commit of this project, checked out beside it (a git worktree under DATA_DIR, ignored),
 * so that its service runs on the same database in the same sitting as ours. Kept between runs;
 * `git worktree remove <dir>` deletes one.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { loadConfig, projectRoot } from '../src/config.js';
import { makefileNodeFlags } from './settings.js';

export interface BaselineCheckout {
  ref: string;
  commit: string;
  subject: string;
  dir: string;
  /** How it got its node_modules. */
  nodeModules: 'symlink to ours (identical package-lock.json)' | 'npm ci' | 'already there';
  /** Its Makefile's SERVICE_NODE_FLAGS (as make run started it then), unless BENCH_BASELINE_NODE_FLAGS says otherwise. */
  nodeFlags: string[];
  migrations: string[];
}

const git = (...args: string[]) => execFileSync('git', args, { cwd: projectRoot, encoding: 'utf8' }).trim();

/** The commit a checkout runs, and whether its files differ from it. */
export function checkoutCommit(dir: string): string {
  const run = (...args: string[]) => execFileSync('git', args, { cwd: dir, encoding: 'utf8' }).trim();
  try {
    return `${run('rev-parse', 'HEAD')}${run('status', '--porcelain', '--untracked-files=no') ? ' plus uncommitted changes' : ''}`;
  } catch {
    return 'unknown (not a git checkout)';
  }
}

export function prepareBaseline(ref: string, nodeFlagsOverride: string | undefined, log: (line: string) => void): BaselineCheckout {
  const commit = git('rev-parse', '--verify', `${ref}^{commit}`);
  const subject = git('log', '-1', '--format=%s', commit);
  const dir = path.join(loadConfig().dataDir, 'bench-baseline', commit.slice(0, 12));
  if (!fs.existsSync(path.join(dir, '.git'))) {
    git('worktree', 'prune');
    fs.rmSync(dir, { recursive: true, force: true });
    fs.mkdirSync(path.dirname(dir), { recursive: true });
    log(`# baseline: git worktree add --detach ${path.relative(projectRoot, dir)} ${commit.slice(0, 12)}`);
    git('worktree', 'add', '--detach', dir, commit);
  }
  const lock = (root: string) => fs.readFileSync(path.join(root, 'package-lock.json'), 'utf8');
  let nodeModules: BaselineCheckout['nodeModules'] = 'already there';
  const modules = path.join(dir, 'node_modules');
  // A link made when the locks were equal is stale once ours changes.
  if (fs.lstatSync(modules, { throwIfNoEntry: false })?.isSymbolicLink() && lock(dir) !== lock(projectRoot)) fs.unlinkSync(modules);
  if (!fs.existsSync(modules)) {
    if (lock(dir) === lock(projectRoot)) {
      fs.symlinkSync(path.join(projectRoot, 'node_modules'), modules, 'dir');
      nodeModules = 'symlink to ours (identical package-lock.json)';
    } else {
      log('# baseline: package-lock.json differs from ours: npm ci in its worktree');
      execFileSync('npm', ['ci', '--no-audit', '--no-fund'], { cwd: dir, stdio: 'inherit' });
      nodeModules = 'npm ci';
    }
  }
  const migrations = fs
    .readdirSync(path.join(dir, 'db', 'migrations'))
    .filter((f) => f.endsWith('.sql'))
    .map((f) => f.replace(/\.sql$/, ''))
    .sort();
  const nodeFlags = nodeFlagsOverride !== undefined ? nodeFlagsOverride.split(/\s+/).filter(Boolean) : makefileNodeFlags(dir);
  return { ref, commit, subject, dir, nodeModules, nodeFlags, migrations };
}
