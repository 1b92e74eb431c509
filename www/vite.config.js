import { defineConfig } from 'vite';

export default defineConfig({
  // The package starts its own module worker and loads its wasm by URL: leave it unbundled in dev.
  optimizeDeps: { exclude: ['edgechat'] },
  worker: { format: 'es' },
  build: { target: 'es2022' },
});
