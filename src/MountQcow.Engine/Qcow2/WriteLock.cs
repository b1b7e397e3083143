namespace MountQcow.Qcow2;

/// <summary>
/// The lock of a writable image, and the one rule for a change that fails under it. Reads and
/// writes into clusters the image already owns (which change no metadata) share it; every other
/// change (allocating writes, zeros, discards, flushes, snapshots, closing) holds it alone.
/// </summary>
/// <remarks>
/// The failure rule (<see cref="Fails"/>), judged while the lock is still held (an exception
/// filter runs before the finally that releases it), so no other change sees the state between:
/// <list type="bullet">
/// <item>A refusal changed nothing, and writing goes on: <see cref="ImageFullException"/> (allocation
/// fails before it writes), <see cref="UnsupportedFeatureException"/> and <see cref="ArgumentException"/>
/// (a change checks what it cannot do before it starts).</item>
/// <item>Corruption found while writing stops writing and marks the image corrupt, as QEMU does,
/// so nothing writes it again unchecked.</item>
/// <item>Any other <see cref="ImageException"/> or <see cref="IOException"/> stops writing: the
/// metadata in memory may no longer match the file.</item>
/// </list>
/// Once stopped, every change but closing is refused; reads go on.
/// </remarks>
internal sealed class WriteLock : IDisposable
{
    private readonly ReaderWriterLockSlim _rw = new(LockRecursionPolicy.NoRecursion);
    private readonly string _path;
    private readonly Action _markCorrupt;
    private bool _stopped; // read and written under the lock

    /// <param name="path">The image's path, for messages.</param>
    /// <param name="markCorrupt">Sets the image's corrupt bit (called under the exclusive lock, best effort).</param>
    public WriteLock(string path, Action markCorrupt)
    {
        _path = path;
        _markCorrupt = markCorrupt;
    }

    /// <summary>Whether writing stopped after a failure (read it under the lock).</summary>
    public bool Stopped => _stopped;

    /// <summary>Holds the lock shared for a read; the scope's Dispose releases it.</summary>
    public ReadScope Read()
    {
        _rw.EnterReadLock();
        return new ReadScope(_rw);
    }

    /// <summary>A change that needs no exclusive lock (it writes into clusters the image owns), under the shared lock.</summary>
    public TResult Shared<TState, TResult>(TState state, Func<TState, TResult> change) where TState : allows ref struct
    {
        _rw.EnterReadLock();
        try
        {
            return change(state);
        }
        catch (Exception e) when (Fails(e))
        {
            throw; // not reached: Fails only records
        }
        finally
        {
            _rw.ExitReadLock();
        }
    }

    /// <summary>A change under the exclusive lock; refused once writing stopped.</summary>
    public TResult Exclusive<TState, TResult>(TState state, Func<TState, TResult> change) where TState : allows ref struct
    {
        EnterExclusive();
        try
        {
            return change(state);
        }
        catch (Exception e) when (Fails(e))
        {
            throw; // not reached: Fails only records
        }
        finally
        {
            _rw.ExitWriteLock();
        }
    }

    /// <summary>A change under the exclusive lock that returns nothing; refused once writing stopped.</summary>
    public void Exclusive<TState>(TState state, Action<TState> change) where TState : allows ref struct
    {
        EnterExclusive();
        try
        {
            change(state);
        }
        catch (Exception e) when (Fails(e))
        {
            throw; // not reached: Fails only records
        }
        finally
        {
            _rw.ExitWriteLock();
        }
    }

    /// <summary>The exclusive lock for closing: taken even after writing stopped (closing then writes nothing).</summary>
    public WriteScope ForClosing()
    {
        _rw.EnterWriteLock();
        return new WriteScope(_rw);
    }

    private void EnterExclusive()
    {
        _rw.EnterWriteLock();
        if (!_stopped) return;
        _rw.ExitWriteLock();
        throw new ImageIOException($"{_path}: writing stopped after an earlier error; unmount and check the image");
    }

    /// <summary>Applies the failure rule (see the remarks); returns false, so the exception goes on to the caller.</summary>
    private bool Fails(Exception e)
    {
        switch (e)
        {
            case ImageFullException or UnsupportedFeatureException or ArgumentException:
                break;
            case CorruptImageException:
                _stopped = true;
                _markCorrupt();
                break;
            case ImageException or IOException:
                _stopped = true;
                break;
        }
        return false;
    }

    public void Dispose() => _rw.Dispose();

    /// <summary>The shared lock, held until disposed.</summary>
    public readonly struct ReadScope(ReaderWriterLockSlim rw) : IDisposable
    {
        public void Dispose() => rw.ExitReadLock();
    }

    /// <summary>The exclusive lock, held until disposed.</summary>
    public readonly struct WriteScope(ReaderWriterLockSlim rw) : IDisposable
    {
        public void Dispose() => rw.ExitWriteLock();
    }
}
